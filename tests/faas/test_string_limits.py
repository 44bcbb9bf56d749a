"""Strings longer than AWS allows are refused as AWS refuses them, on SQLite as on PostgreSQL
(whose columns would otherwise refuse them with a database error)."""
from __future__ import annotations

import pytest

from slfaas.billing.budgets import Budget
from slfaas.errors import InvalidParameter
from slfaas.faas.registry import Registry
from slfaas.faas.service import FunctionService
from tests.faas.conftest import FakeNode


@pytest.fixture
def service(database_url, tmp_path):  # type: ignore[no-untyped-def]
    registry = Registry(database_url)
    svc = FunctionService(registry, FakeNode(tmp_path / "logs"), tmp_path / "code")  # type: ignore[arg-type]
    yield svc
    svc.events.queue.close()
    registry.close()


def _create(svc, zips, **extra):  # type: ignore[no-untyped-def]
    params = {"FunctionName": "fn", "Runtime": "slfaas-lora", "Role": "arn:aws:iam::000000000000:role/r",
              "Code": {"ZipFile": zips["a"]}, **extra}
    return svc.create_function(params)


@pytest.mark.parametrize("key, limit", [("Description", 256), ("Handler", 128), ("Role", 2048)])
def test_too_long_strings_are_invalid_parameters(service, zips, key, limit) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidParameter, match=f"less than or equal to {limit}"):
        _create(service, zips, **{key: "x" * (limit + 1)})
    rec = _create(service, zips, **{key: "x" * limit})        # the limit itself is fine
    assert getattr(rec, key.lower()) == "x" * limit
    with pytest.raises(InvalidParameter, match=f"less than or equal to {limit}"):
        service.update_configuration("fn", {key: "y" * (limit + 1)})


def test_long_model_names_and_budget_scopes_are_refused(service, tiny_assets) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidParameter, match="at most 256"):
        service.add_base_model("m" * 257, str(tiny_assets.base))
    assert service.add_base_model("m" * 256, str(tiny_assets.base))["Name"] == "m" * 256
    with pytest.raises(InvalidParameter, match="1-170 characters"):
        Budget.create("b", "1", "day", function_name="f" * 171)
