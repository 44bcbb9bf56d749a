"""Per-function platform settings (SLFAAS_KEEP_ALIVE_POLICY, ...): allowed among the reserved
SLFAAS_* names, bounded, refused with InvalidParameterValueException when out of range."""
from __future__ import annotations

import pytest

from slfaas.errors import InvalidParameter, NotFound
from slfaas.faas.function_settings import FunctionSettings, parse_function_settings


def _params(zips: dict[str, str], env: dict[str, str], name: str = "fn") -> dict:
    return {"FunctionName": name, "Runtime": "slfaas-lora", "Role": "arn:aws:iam::000000000000:role/r",
            "Code": {"ZipFile": zips["a"]}, "Environment": {"Variables": env}}


GOOD = {"SLFAAS_KEEP_ALIVE_POLICY": "histogram", "SLFAAS_KEEP_ALIVE_S": "30.5",
        "SLFAAS_KEEP_ALIVE_BIN_S": "0.5", "SLFAAS_TTFT_SLO_MS": "250", "SLFAAS_MAX_BATCH_SIZE": "4", "MY_VAR": "x"}


def test_settings_are_accepted_and_stored(svc, zips) -> None:  # type: ignore[no-untyped-def]
    rec = svc.create_function(_params(zips, GOOD))
    assert rec.environment == GOOD
    assert parse_function_settings(rec.environment) == FunctionSettings("histogram", 30.5, 0.5, 250, 4)
    assert parse_function_settings({}) == FunctionSettings()
    # the node gets the batch size as the instances' capacity; unset is one at a time
    assert svc.spec(rec).max_batch_size == 4
    assert svc.spec(rec).ttft_slo_ms == 250 and svc.spec(rec).shared_execution is False
    plain = svc.create_function(_params(zips, {}, name="plain"))
    assert svc.spec(plain).max_batch_size == 1 and svc.spec(plain).ttft_slo_ms is None


def test_shared_execution_is_opt_in_and_needs_the_built_in_handler(svc, zips, tiny_assets) -> None:  # type: ignore[no-untyped-def]
    import base64

    rec = svc.create_function(_params(zips, {"SLFAAS_SHARED_EXECUTION": "1"}))
    spec = svc.spec(rec)
    assert spec.shared_execution and spec.pool_key != (spec.name, spec.revision_id)   # its backbone's runtime
    assert svc.spec(svc.create_function(_params(zips, {"SLFAAS_SHARED_EXECUTION": "0"}, name="own"))).pool_key \
        == ("own", svc.get_function("own").revision_id)
    with_handler = base64.b64encode(tiny_assets.zip(tiny_assets.adapter_a,
                                                    {"handler.py": "def handler(e, c):\n    return 1\n"})).decode()
    with pytest.raises(InvalidParameter, match="built-in handler"):
        svc.create_function({**_params(zips, {"SLFAAS_SHARED_EXECUTION": "1"}, name="mine"),
                             "Code": {"ZipFile": with_handler}})
    with pytest.raises(InvalidParameter, match="built-in handler"):
        svc.update_code("fn", {"ZipFile": with_handler})


@pytest.mark.parametrize(("name", "value", "needle"), [
    ("SLFAAS_KEEP_ALIVE_POLICY", "forever", "fixed, histogram"),
    ("SLFAAS_KEEP_ALIVE_POLICY", "", "fixed, histogram"),
    ("SLFAAS_KEEP_ALIVE_S", "-1", "from 0 to 86400"),
    ("SLFAAS_KEEP_ALIVE_S", "86401", "from 0 to 86400"),
    ("SLFAAS_KEEP_ALIVE_S", "nan", "SLFAAS_KEEP_ALIVE_S"),
    ("SLFAAS_KEEP_ALIVE_S", "inf", "SLFAAS_KEEP_ALIVE_S"),
    ("SLFAAS_KEEP_ALIVE_S", "ten", "SLFAAS_KEEP_ALIVE_S"),
    ("SLFAAS_KEEP_ALIVE_BIN_S", "0.01", "from 0.1 to 3600"),
    ("SLFAAS_TTFT_SLO_MS", "0", "an integer from 1 to 600000"),
    ("SLFAAS_TTFT_SLO_MS", "2.5", "an integer"),
    ("SLFAAS_TTFT_SLO_MS", "1" * 400, "an integer"),
    ("SLFAAS_MAX_BATCH_SIZE", "0", "an integer from 1 to 64"),
    ("SLFAAS_MAX_BATCH_SIZE", "65", "an integer from 1 to 64"),
    ("SLFAAS_MAX_BATCH_SIZE", "2.0", "an integer"),
    ("SLFAAS_MAX_BATCH_SIZE", "four", "an integer"),
    ("SLFAAS_SHARED_EXECUTION", "2", "an integer from 0 to 1"),
    ("SLFAAS_SHARED_EXECUTION", "yes", "an integer"),
])
def test_out_of_range_is_refused_and_nothing_is_created(svc, zips, name, value, needle) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidParameter, match=needle):
        svc.create_function(_params(zips, {name: value}))
    with pytest.raises(NotFound):
        svc.get_function("fn")


def test_other_platform_names_stay_reserved(svc, zips) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidParameter, match="Reserved keys used in this request: SLFAAS_KEEP_ALIVE"):
        svc.create_function(_params(zips, {"SLFAAS_KEEP_ALIVE": "1"}))


def test_updates_are_checked_too(svc, zips) -> None:  # type: ignore[no-untyped-def]
    svc.create_function(_params(zips, {"SLFAAS_KEEP_ALIVE_S": "60"}))
    with pytest.raises(InvalidParameter, match="SLFAAS_KEEP_ALIVE_S"):
        svc.update_configuration("fn", {"Environment": {"Variables": {"SLFAAS_KEEP_ALIVE_S": "1e9"}}})
    assert svc.get_function("fn").environment == {"SLFAAS_KEEP_ALIVE_S": "60"}
