"""Versions, aliases, async retries and reserved concurrency in FunctionService, with a fake node."""
from __future__ import annotations

import base64
import json
import time

import pytest

from slfaas.errors import Conflict, InvalidParameter, NotFound, PreconditionFailed, TooManyRequests
from slfaas.faas.aliases import AliasRouter
from slfaas.faas.registry import Registry
from slfaas.faas.retry_policy import EventRetryPolicy
from slfaas.faas.service import FunctionService
from tests.gpu_node.fakes import wait_until


def _create(svc: FunctionService, zips: dict[str, str], **extra) -> None:  # type: ignore[no-untyped-def]
    svc.create_function({"FunctionName": "fn", "Runtime": "slfaas-lora", "Role": "arn:aws:iam::000000000000:role/r",
                         "Code": {"ZipFile": zips["a"]}, **extra})
    _wait_active(svc, "fn")


def _wait_active(svc: FunctionService, ref: str, qualifier: str | None = None) -> None:
    assert wait_until(lambda: svc.get_function(ref, qualifier).state == "Active"
                      and svc.get_function(ref, qualifier).last_update_status == "Successful", timeout_s=5)


def test_publish_is_an_immutable_snapshot(svc, node, zips) -> None:  # type: ignore[no-untyped-def]
    _create(svc, zips, Description="first")
    latest = svc.get_function("fn")
    v1 = svc.versions.publish("fn", {})
    assert (v1.version, v1.state, v1.description) == ("1", "Pending", "first")
    assert v1.revision_id != latest.revision_id and v1.code_sha256_hex == latest.code_sha256_hex
    _wait_active(svc, "fn", "1")
    # Nothing changed since version 1: publishing again returns it (AWS publishes nothing new).
    assert svc.versions.publish("fn", {}).version == "1"
    # $LATEST changes; version 1 does not.
    updated = svc.update_code("fn", {"ZipFile": zips["b"]})
    assert node.retired[-1] == ("fn", updated.revision_id)
    _wait_active(svc, "fn")
    assert svc.get_function("fn", "1").code_sha256_hex == latest.code_sha256_hex
    assert svc.get_function("fn:1").code_sha256_hex == latest.code_sha256_hex
    assert svc.get_function("fn").code_sha256_hex != latest.code_sha256_hex
    spec1, spec_latest = svc.spec(svc.get_function("fn", "1")), svc.spec(svc.get_function("fn"))
    assert spec1.pool_key != spec_latest.pool_key and spec1.version == "1"
    assert spec1.arn.endswith(":function:fn:1") and spec_latest.arn.endswith(":function:fn")
    v2 = svc.versions.publish("fn", {"Description": "second"})
    assert (v2.version, v2.description) == ("2", "second")
    assert [r.version for r in svc.registry.list_versions("fn")] == ["$LATEST", "1", "2"]


def test_publish_preconditions(svc, node, zips) -> None:  # type: ignore[no-untyped-def]
    _create(svc, zips)
    latest = svc.get_function("fn")
    with pytest.raises(PreconditionFailed):
        svc.versions.publish("fn", {"RevisionId": "not-the-revision"})
    with pytest.raises(InvalidParameter, match="CodeSHA256"):
        svc.versions.publish("fn", {"CodeSha256": "AAAA"})
    sha = base64.b64encode(bytes.fromhex(latest.code_sha256_hex)).decode()
    assert svc.versions.publish("fn", {"CodeSha256": sha, "RevisionId": latest.revision_id}).version == "1"
    node.gate.clear()
    svc.update_configuration("fn", {"Timeout": 7})
    with pytest.raises(Conflict, match="update is in progress"):
        svc.versions.publish("fn", {})
    node.gate.set()
    with pytest.raises(NotFound):
        svc.versions.publish("nope", {})


def test_version_numbers_are_never_reused(svc, zips) -> None:  # type: ignore[no-untyped-def]
    _create(svc, zips)
    svc.versions.publish("fn", {})
    _wait_active(svc, "fn", "1")
    svc.delete_function("fn", "1")
    with pytest.raises(NotFound):
        svc.get_function("fn", "1")
    svc.update_configuration("fn", {"Timeout": 9})
    _wait_active(svc, "fn")
    assert svc.versions.publish("fn", {}).version == "2"
    # Deleting the function forgets its numbering (a new function starts at 1 again).
    svc.delete_function("fn")
    _create(svc, zips)
    assert svc.versions.publish("fn", {}).version == "1"


def test_create_and_update_with_publish(svc, zips) -> None:  # type: ignore[no-untyped-def]
    v1 = svc.create_function({"FunctionName": "fn", "Runtime": "slfaas-lora", "Role": "r",
                              "Code": {"ZipFile": zips["a"]}, "Publish": True})
    assert v1.version == "1"
    _wait_active(svc, "fn", "1")
    _wait_active(svc, "fn")
    v2 = svc.update_code("fn", {"ZipFile": zips["b"], "Publish": True})
    assert v2.version == "2" and v2.code_sha256_hex == svc.get_function("fn").code_sha256_hex
    _wait_active(svc, "fn", "2")


def test_qualifiers_and_delete_rules(svc, zips) -> None:  # type: ignore[no-untyped-def]
    _create(svc, zips)
    svc.versions.publish("fn", {})
    _wait_active(svc, "fn", "1")
    svc.versions.create_alias("fn", {"Name": "prod", "FunctionVersion": "1"})
    assert svc.get_function("fn", "prod").version == "1"
    assert svc.get_function("fn", "$LATEST").version == "$LATEST"
    for q in ("2", "nope"):
        with pytest.raises(NotFound, match="Function not found"):
            svc.get_function("fn", q)
    with pytest.raises(InvalidParameter):
        svc.get_function("fn", "bad qualifier!")
    with pytest.raises(Conflict, match="aliases reference it: \\[prod\\]"):
        svc.delete_function("fn", "1")
    with pytest.raises(InvalidParameter, match=r"\$LATEST"):
        svc.delete_function("fn", "$LATEST")
    with pytest.raises(InvalidParameter, match="DeleteAlias"):
        svc.delete_function("fn", "prod")
    with pytest.raises(NotFound):
        svc.delete_function("fn", "5")
    with pytest.raises(InvalidParameter, match="immutable"):
        svc.update_configuration("fn:1", {"Timeout": 3})
    svc.versions.delete_alias("fn", "prod")
    svc.delete_function("fn", "1")
    assert [r.version for r in svc.registry.list_versions("fn")] == ["$LATEST"]


def test_alias_operations(svc, zips) -> None:  # type: ignore[no-untyped-def]
    _create(svc, zips)
    svc.versions.publish("fn", {})
    svc.update_configuration("fn", {"Timeout": 11})
    _wait_active(svc, "fn")
    svc.versions.publish("fn", {})
    alias = svc.versions.create_alias("fn", {"Name": "live", "FunctionVersion": "1", "Description": "d"})
    with pytest.raises(Conflict, match="Alias already exists"):
        svc.versions.create_alias("fn", {"Name": "live", "FunctionVersion": "2"})
    with pytest.raises(NotFound):
        svc.versions.create_alias("fn", {"Name": "x", "FunctionVersion": "9"})
    with pytest.raises(NotFound):
        svc.versions.create_alias("fn", {"Name": "x", "FunctionVersion": "1",
                                         "RoutingConfig": {"AdditionalVersionWeights": {"9": 0.5}}})
    with pytest.raises(InvalidParameter):
        svc.versions.create_alias("fn", {"Name": "123", "FunctionVersion": "1"})
    with pytest.raises(PreconditionFailed):
        svc.versions.update_alias("fn", "live", {"RevisionId": "stale", "FunctionVersion": "2"})
    updated = svc.versions.update_alias("fn", "live", {"RevisionId": alias.revision_id,
                                                       "RoutingConfig": {"AdditionalVersionWeights": {"2": 0.25}}})
    assert updated.routing == {"2": 0.25} and updated.revision_id != alias.revision_id
    assert updated.function_version == "1" and updated.description == "d"
    cfg = svc.versions.alias_configuration(updated)
    assert cfg["AliasArn"].endswith(":function:fn:live")
    assert cfg["RoutingConfig"] == {"AdditionalVersionWeights": {"2": 0.25}}
    assert [a.name for a in svc.versions.list_aliases("fn", "2", None, None)[0]] == ["live"]
    cleared = svc.versions.update_alias("fn", "live", {"RoutingConfig": {}})
    assert cleared.routing == {} and "RoutingConfig" not in svc.versions.alias_configuration(cleared)
    svc.versions.delete_alias("fn", "live")
    svc.versions.delete_alias("fn", "live")  # AWS: deleting a missing alias is not an error
    with pytest.raises(NotFound, match="Cannot find alias"):
        svc.versions.get_alias("fn", "live")


def test_alias_routing_runs_the_drawn_version(svc, node, zips) -> None:  # type: ignore[no-untyped-def]
    _create(svc, zips)
    svc.versions.publish("fn", {})
    svc.update_configuration("fn", {"Timeout": 12})
    _wait_active(svc, "fn")
    svc.versions.publish("fn", {})
    _wait_active(svc, "fn", "1")
    _wait_active(svc, "fn", "2")
    svc.versions.create_alias("fn", {"Name": "canary", "FunctionVersion": "1",
                                     "RoutingConfig": {"AdditionalVersionWeights": {"2": 0.3}}})
    svc.versions.router = AliasRouter(seed=7)
    counts = {"1": 0, "2": 0}
    for _ in range(400):
        out = svc.invoke("fn", "canary", b"{}")
        counts[out.executed_version] += 1
        req = node.invoked[-1]
        assert req.function.version == out.executed_version
        assert req.function.arn.endswith(":function:fn:canary")   # context.invoked_function_arn
    assert abs(counts["2"] / 400 - 0.3) < 0.08


def test_event_invocation_retries_function_errors(svc, node, zips) -> None:  # type: ignore[no-untyped-def]
    _create(svc, zips)
    svc.events.policy = EventRetryPolicy(retry_delays_s=(0.05, 0.1))
    node.function_error = ("Handler.Boom", json.dumps({"errorMessage": "boom", "errorType": "Handler.Boom",
                                                       "stackTrace": []}).encode())
    out = svc.invoke("fn", None, b'{"x": 1}', invocation_type="Event")
    assert out.status_code == 202 and out.payload == b""
    assert wait_until(lambda: svc.registry.get_event(out.request_id).status == "function_error", timeout_s=5)
    ev = svc.registry.get_event(out.request_id)
    assert ev.attempts == 3 and json.loads(ev.result)["errorMessage"] == "boom"
    assert len([r for r in node.invoked if r.request_id == out.request_id]) == 3
    assert svc.registry.get_invocation(out.request_id).status == "function_error"
    # A success is kept as the record's result after one attempt.
    node.function_error = None
    ok = svc.invoke("fn", None, b'{"y": 2}', invocation_type="Event")
    assert wait_until(lambda: svc.registry.get_event(ok.request_id).status == "success", timeout_s=5)
    assert json.loads(svc.registry.get_event(ok.request_id).result)["echo"] == {"y": 2}
    assert svc.events.details(ok.request_id)["Attempts"] == 1


def test_event_payload_limit_and_throttled_events_wait(svc, node, zips) -> None:  # type: ignore[no-untyped-def]
    from slfaas.errors import RequestTooLarge

    _create(svc, zips)
    with pytest.raises(RequestTooLarge, match="1048576"):
        svc.invoke("fn", None, b'"' + b"x" * (1 << 20) + b'"', invocation_type="Event")
    svc.events.policy = EventRetryPolicy(throttle_backoff_s=0.05, throttle_backoff_max_s=0.05)
    svc.limits.put_reserved("fn", {"ReservedConcurrentExecutions": 0})
    with pytest.raises(TooManyRequests) as exc:
        svc.invoke("fn", None, b"{}")
    assert exc.value.reason == "ReservedFunctionConcurrentInvocationLimitExceeded"
    out = svc.invoke("fn", None, b"{}", invocation_type="Event")
    assert wait_until(lambda: svc.registry.get_event(out.request_id).throttles >= 2, timeout_s=5)
    assert svc.registry.get_event(out.request_id).attempts == 0
    svc.limits.delete_reserved("fn")
    assert wait_until(lambda: svc.registry.get_event(out.request_id).status == "success", timeout_s=5)


def test_events_resume_after_restart(tmp_path, node, zips) -> None:  # type: ignore[no-untyped-def]
    registry = Registry(f"sqlite:///{tmp_path / 'r.db'}")
    first = FunctionService(registry, node, tmp_path / "code")  # type: ignore[arg-type]
    _create(first, zips)
    first.events.queue.close()          # the "crash": nothing runs the queued event
    time.sleep(0.05)
    out = first.invoke("fn", None, b'{"z": 3}', invocation_type="Event")
    assert registry.get_event(out.request_id).status == "queued"
    second = FunctionService(registry, node, tmp_path / "code")  # type: ignore[arg-type]
    try:
        assert wait_until(lambda: registry.get_event(out.request_id).status == "success", timeout_s=5)
    finally:
        second.events.queue.close()
        registry.close()
