"""Extracted code lives exactly as long as a function or version refers to it: identical zips
share one extraction, a rejected create or update leaves nothing, a delete removes what no
one else uses. And AWS's 4 KB limit on a function's environment."""
from __future__ import annotations

import base64
from pathlib import Path

import pytest

from slfaas.errors import Conflict, InvalidParameter
from slfaas.faas.registry import Registry
from slfaas.faas.service import FunctionService
from tests.bad_inputs import with_config
from tests.gpu_node.fakes import wait_until

ROLE = "arn:aws:iam::000000000000:role/r"


def _create(svc: FunctionService, name: str, zip_b64: str, **extra) -> None:  # type: ignore[no-untyped-def]
    svc.create_function({"FunctionName": name, "Runtime": "slfaas-lora", "Role": ROLE, "Code": {"ZipFile": zip_b64},
                         **extra})
    assert wait_until(lambda: svc.get_function(name).last_update_status != "InProgress", timeout_s=5)


def _stored(svc: FunctionService) -> set[str]:
    return {p.name for p in svc.code.root.iterdir()}


def _package(svc: FunctionService, name: str) -> set[str]:
    sha = svc.get_function(name).code_sha256_hex
    return {sha, f"{sha}.zip"}


def test_identical_zips_share_one_extraction_until_the_last_user_goes(svc, zips) -> None:  # type: ignore[no-untyped-def]
    _create(svc, "one", zips["a"])
    _create(svc, "two", zips["a"])
    assert _stored(svc) == _package(svc, "one") == _package(svc, "two")
    svc.delete_function("one")
    assert _stored(svc) == _package(svc, "two")
    svc.delete_function("two")
    assert _stored(svc) == set()


def test_update_removes_the_old_code_unless_a_version_runs_it(svc, zips) -> None:  # type: ignore[no-untyped-def]
    _create(svc, "fn", zips["a"])
    a = _package(svc, "fn")
    svc.update_code("fn", {"ZipFile": zips["b"]})
    assert wait_until(lambda: svc.get_function("fn").last_update_status == "Successful", timeout_s=5)
    b = _package(svc, "fn")
    assert _stored(svc) == b                                   # nothing refers to a's code any more
    version = svc.versions.publish("fn", {})                   # version 1 runs b
    svc.update_code("fn", {"ZipFile": zips["a"]})
    assert wait_until(lambda: svc.get_function("fn").last_update_status == "Successful", timeout_s=5)
    assert _stored(svc) == a | b                               # $LATEST runs a, version 1 runs b
    svc.delete_function("fn", version.version)
    assert _stored(svc) == a
    svc.delete_function("fn")
    assert _stored(svc) == set()


def test_rejected_creates_and_updates_leave_nothing(svc, zips, tiny_assets) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidParameter, match="does not fit"):
        _create(svc, "misfit", zips["misfit"])
    unknown_base = base64.b64encode(with_config(tiny_assets.adapter_a, base_model_name_or_path="no-such")).decode()
    with pytest.raises(InvalidParameter, match="no-such"):
        _create(svc, "nobase", unknown_base)
    assert _stored(svc) == set()
    _create(svc, "fn", zips["a"])
    kept = _stored(svc)
    with pytest.raises(InvalidParameter, match="does not fit"):
        svc.update_code("fn", {"ZipFile": zips["misfit"]})
    with pytest.raises(Conflict):                              # the same name again
        _create(svc, "fn", zips["b"])
    assert _stored(svc) == kept


def test_a_restart_sweeps_code_nothing_refers_to(tmp_path: Path, svc, node, zips) -> None:  # type: ignore[no-untyped-def]
    _create(svc, "fn", zips["a"])
    kept = _stored(svc)
    (svc.code.root / ("f" * 64)).mkdir()                        # left by a crash between store and commit
    (svc.code.root / ("f" * 64 + ".zip")).write_bytes(b"PK")
    (svc.code.root / ".half-written.tmp").mkdir()
    again = FunctionService(Registry(svc.registry.database_url), node, svc.code.root)  # type: ignore[arg-type]
    try:
        assert _stored(again) == kept
    finally:
        again.events.queue.close()
        again.registry.close()


def test_environment_over_4_kb_is_refused(svc, zips) -> None:  # type: ignore[no-untyped-def]
    big = {"Variables": {"SECRET": "x" * (300 * 1024)}}
    with pytest.raises(InvalidParameter, match="exceeded the 4KB limit"):
        _create(svc, "fn", zips["a"], Environment=big)
    just_over = {"Variables": {"A": "x" * (4096 - len('{"A":""}') + 1)}}
    with pytest.raises(InvalidParameter, match="exceeded the 4KB limit"):
        _create(svc, "fn", zips["a"], Environment=just_over)
    assert _stored(svc) == set()
    at_limit = {"Variables": {"A": "x" * (4096 - len('{"A":""}'))}}
    _create(svc, "fn", zips["a"], Environment=at_limit)
    with pytest.raises(InvalidParameter, match="exceeded the 4KB limit"):
        svc.update_configuration("fn", {"Environment": big})
    assert svc.get_function("fn").environment == at_limit["Variables"]
