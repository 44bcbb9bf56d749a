"""FunctionService with a fake node: states, validation, paging, invoke checks."""
from __future__ import annotations

import json
import time

import pytest

from slfaas.errors import (Conflict, InvalidParameter, InvalidRequestContent, NodeError, NotFound, RequestTooLarge,
                           TooManyRequests)
from slfaas.faas.registry import Registry
from slfaas.faas.function_config import configuration
from slfaas.faas.service import MAX_SYNC_PAYLOAD_BYTES, FunctionService
from tests.gpu_node.fakes import wait_until


def _params(zips: dict[str, str], name: str = "fn", which: str = "a", **extra) -> dict:  # type: ignore[no-untyped-def]
    return {"FunctionName": name, "Runtime": "slfaas-lora", "Role": "arn:aws:iam::000000000000:role/r",
            "Code": {"ZipFile": zips[which]}, **extra}


def _wait_state(svc: FunctionService, name: str, state: str) -> None:
    assert wait_until(lambda: svc.get_function(name).state == state, timeout_s=5), svc.get_function(name)


def _active(svc: FunctionService, zips: dict[str, str], name: str = "fn", **extra) -> None:  # type: ignore[no-untyped-def]
    svc.create_function(_params(zips, name, **extra))
    _wait_state(svc, name, "Active")


def test_pending_until_prepare_returns_then_active(svc, node, zips, tiny_assets) -> None:  # type: ignore[no-untyped-def]
    node.gate.clear()
    rec = svc.create_function(_params(zips))
    assert (rec.state, rec.last_update_status) == ("Pending", "InProgress")
    time.sleep(0.1)
    assert svc.get_function("fn").state == "Pending"
    with pytest.raises(Conflict, match="Pending"):
        svc.invoke("fn", None, b'{"prompt": "x"}')
    assert node.invoked == []
    node.gate.set()
    _wait_state(svc, "fn", "Active")
    fn = svc.get_function("fn")
    assert (fn.last_update_status, fn.state_reason, fn.revision_id) == ("Successful", "", rec.revision_id)
    [spec] = node.prepared
    assert spec.base_model_path == tiny_assets.base.resolve()
    assert spec.code_dir == svc.code.root / rec.code_sha256_hex
    assert (spec.name, spec.revision_id, spec.timeout_s) == ("fn", rec.revision_id, 60)
    out = svc.invoke("fn", None, b'{"prompt": "x"}')
    assert out.status_code == 200 and out.function_error is None
    assert json.loads(out.payload)["echo"] == {"prompt": "x"}
    inv = svc.registry.get_invocation(out.request_id)
    assert (inv.status, inv.prompt_tokens, inv.completion_tokens, inv.ttft_ms) == ("success", 3, 5, 1.5)
    assert inv.instance_id == "inst-1" and inv.cold_start is True


def test_prepare_node_error_makes_function_failed(svc, node, zips) -> None:  # type: ignore[no-untyped-def]
    node.prepare_error = NodeError("backbone /m failed to load: disk on fire")
    svc.create_function(_params(zips))
    _wait_state(svc, "fn", "Failed")
    fn = svc.get_function("fn")
    assert "disk on fire" in fn.state_reason
    assert fn.state_reason_code == "InternalError"
    assert fn.last_update_status == "Failed"
    cfg = configuration(fn, "us-east-1")
    assert cfg["State"] == "Failed" and "disk on fire" in cfg["StateReason"]
    with pytest.raises(Conflict, match="Failed"):
        svc.invoke("fn", None, b"{}")


def test_create_validates_and_stores_nothing_on_error(svc, zips) -> None:  # type: ignore[no-untyped-def]
    bad = [
        _params(zips, name="bad name"),
        _params(zips, Runtime="python3.12"),
        _params(zips, Role=""),
        _params(zips, Code={"S3Bucket": "b", "S3Key": "k"}),
        _params(zips, Code={"ZipFile": "%%% not base64"}),
        _params(zips, which="misfit"),
        _params(zips, Timeout=0), _params(zips, Timeout=901), _params(zips, Timeout="5"), _params(zips, Timeout=True),
        _params(zips, MemorySize=127), _params(zips, MemorySize=10241), _params(zips, MemorySize=1.5),
        _params(zips, Environment={"Variables": {"AWS_LAMBDA_FUNCTION_NAME": "x"}}),
        _params(zips, Environment={"Variables": {"SLFAAS_RUNTIME_SOCKET": "/tmp/x"}}),
        _params(zips, Environment={"Variables": {"_HANDLER": "x"}}),
        _params(zips, Environment={"Variables": {"OK": 5}}),
        _params(zips, Environment={"Variables": ["A=1"]}),
        _params(zips, Environment={"Variables": {"SLFAAS_BASE_MODEL": "/nonexistent/model"}}),
    ]
    for params in bad:
        with pytest.raises(InvalidParameter):
            svc.create_function(params)
    with pytest.raises(NotFound):
        svc.get_function("fn")


@pytest.mark.parametrize("key, value, message", [
    ("Timeout", 0, "Member must have value greater than or equal to 1"),
    ("Timeout", 901, "Member must have value less than or equal to 900"),
    ("MemorySize", 127, "greater than or equal to 128"),
    ("MemorySize", 10241, "less than or equal to 10240"),
])
def test_range_messages(svc, zips, key, value, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidParameter, match=message):
        svc.create_function(_params(zips, **{key: value}))


def test_reserved_env_key_is_named(svc, zips) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidParameter, match="Reserved keys used in this request: SLFAAS_DEVICE"):
        svc.create_function(_params(zips, Environment={"Variables": {"OK": "1", "SLFAAS_DEVICE": "cuda"}}))


def test_base_model_env_is_allowed_and_wins(svc, zips, tiny_assets) -> None:  # type: ignore[no-untyped-def]
    svc.add_base_model("tiny", str(tiny_assets.base))
    rec = svc.create_function(_params(zips, Timeout=900, MemorySize=128,
                                      Environment={"Variables": {"SLFAAS_BASE_MODEL": "tiny", "MY_VAR": "1"}}))
    assert (rec.timeout_s, rec.memory_mb) == (900, 128)
    assert rec.environment == {"SLFAAS_BASE_MODEL": "tiny", "MY_VAR": "1"}
    assert rec.base_model_path == str(tiny_assets.base.resolve())
    # naming a base the adapter does not fit is refused up front
    with pytest.raises(InvalidParameter, match="does not fit"):
        svc.create_function(_params(zips, name="fn2",
                                    Environment={"Variables": {"SLFAAS_BASE_MODEL": str(tiny_assets.other_base)}}))


def test_duplicate_create_is_conflict(svc, zips) -> None:  # type: ignore[no-untyped-def]
    first = svc.create_function(_params(zips))
    with pytest.raises(Conflict, match="already exist"):
        svc.create_function(_params(zips, which="b"))
    assert svc.get_function("fn").code_sha256_hex == first.code_sha256_hex


def test_list_functions_marker_and_max_items(svc, zips) -> None:  # type: ignore[no-untyped-def]
    for name in ("c-fn", "a-fn", "b-fn"):
        svc.create_function(_params(zips, name=name))
    page, marker = svc.list_functions(None, 2)
    assert [r.name for r in page] == ["a-fn", "b-fn"] and marker
    page2, marker2 = svc.list_functions(marker, 2)
    assert [r.name for r in page2] == ["c-fn"] and marker2 is None
    page3, marker3 = svc.list_functions(None, 3)  # exactly a full page: no marker
    assert len(page3) == 3 and marker3 is None
    everything, _ = svc.list_functions(None, None)
    assert [r.name for r in everything] == ["a-fn", "b-fn", "c-fn"]


@pytest.mark.parametrize("marker, max_items", [
    (None, 0), (None, -1), (None, 10001),
    ("!!!!", 10), ("a", 10), ("%%%", 10), ("__8=", 10),
])
def test_bad_list_parameters(svc, zips, marker, max_items) -> None:  # type: ignore[no-untyped-def]
    svc.create_function(_params(zips, name="a-fn"))
    with pytest.raises(InvalidParameter):
        svc.list_functions(marker, max_items)


def test_invoke_checks_payload(svc, node, zips) -> None:  # type: ignore[no-untyped-def]
    _active(svc, zips)
    with pytest.raises(InvalidRequestContent, match="Could not parse request body into json"):
        svc.invoke("fn", None, b'{"prompt": ')
    with pytest.raises(InvalidRequestContent):
        svc.invoke("fn", None, b"\xff\xfe")
    with pytest.raises(RequestTooLarge):
        svc.invoke("fn", None, b'"' + b"x" * MAX_SYNC_PAYLOAD_BYTES + b'"')
    with pytest.raises(InvalidParameter):
        svc.invoke("fn", None, b"{}", invocation_type="Async")
    assert node.invoked == []
    assert svc.registry.list_invocations() == []
    # exactly at the limit is accepted; an empty body becomes {}
    at_limit = b'"' + b"x" * (MAX_SYNC_PAYLOAD_BYTES - 2) + b'"'
    assert svc.invoke("fn", None, at_limit).status_code == 200
    assert svc.invoke("fn", None, b"").status_code == 200
    assert node.invoked[-1].payload == b"{}"


def test_invoke_types_and_refs(svc, node, zips) -> None:  # type: ignore[no-untyped-def]
    _active(svc, zips)
    dry = svc.invoke("fn", None, b"{}", invocation_type="DryRun")
    assert dry.status_code == 204 and node.invoked == []
    ev = svc.invoke("arn:aws:lambda:us-east-1:000000000000:function:fn", "$LATEST", b"{}", invocation_type="Event")
    assert ev.status_code == 202
    assert wait_until(lambda: svc.registry.get_invocation(ev.request_id).status == "success")
    with pytest.raises(NotFound):
        svc.invoke("fn", "3", b"{}")
    with pytest.raises(NotFound):
        svc.invoke("nope", None, b"{}")


def test_throttled_invocation_is_recorded(svc, node, zips) -> None:  # type: ignore[no-untyped-def]
    _active(svc, zips)
    node.invoke_error = TooManyRequests("full")
    with pytest.raises(TooManyRequests):
        svc.invoke("fn", None, b"{}")
    [inv] = svc.registry.list_invocations("fn")
    assert (inv.status, inv.error_type, inv.error_message) == ("throttled", "TooManyRequests", "full")


def test_function_error_is_recorded(svc, node, zips) -> None:  # type: ignore[no-untyped-def]
    _active(svc, zips)
    node.function_error = ("Sandbox.Timedout", b'{"errorMessage": "Task timed out after 1.00 seconds"}')
    out = svc.invoke("fn", None, b"{}")
    assert (out.status_code, out.function_error) == (200, "Unhandled")
    inv = svc.registry.get_invocation(out.request_id)
    assert (inv.status, inv.error_type) == ("function_error", "Sandbox.Timedout")
    assert inv.error_message == "Task timed out after 1.00 seconds"
    assert inv.prompt_tokens is None
    node.function_error = ("Runtime.ExitError", b"not json")
    inv = svc.registry.get_invocation(svc.invoke("fn", None, b"{}").request_id)
    assert (inv.status, inv.error_message) == ("function_error", "")


def test_update_code(svc, node, zips, tiny_assets) -> None:  # type: ignore[no-untyped-def]
    _active(svc, zips)
    old = svc.get_function("fn")
    with pytest.raises(InvalidParameter, match="does not fit"):
        svc.update_code("fn", {"ZipFile": zips["misfit"]})
    assert svc.get_function("fn") == old  # refused updates change nothing
    new = svc.update_code("fn", {"ZipFile": zips["b"], "RevisionId": old.revision_id})
    assert new.code_sha256_hex != old.code_sha256_hex and new.revision_id != old.revision_id
    assert new.last_update_status == "InProgress" and new.state == "Active"
    assert node.retired[-1] == ("fn", new.revision_id)
    assert wait_until(lambda: svc.get_function("fn").last_update_status == "Successful")
    assert node.prepared[-1].code_dir == svc.code.root / new.code_sha256_hex
    assert (node.prepared[-1].code_dir / "adapter_model.safetensors").read_bytes() == \
        (tiny_assets.adapter_b / "adapter_model.safetensors").read_bytes()


def test_update_configuration_retires_old_revision(svc, node, zips) -> None:  # type: ignore[no-untyped-def]
    _active(svc, zips)
    old = svc.get_function("fn")
    with pytest.raises(Conflict, match="Revision Id"):
        svc.update_configuration("fn", {"Timeout": 5, "RevisionId": "stale"})
    node.gate.clear()
    new = svc.update_configuration("fn", {"Timeout": 5, "RevisionId": old.revision_id})
    assert new.revision_id != old.revision_id and new.timeout_s == 5
    assert node.retired[-1] == ("fn", new.revision_id)
    with pytest.raises(Conflict, match="update is in progress"):
        svc.update_configuration("fn", {"Timeout": 6})
    node.gate.set()
    assert wait_until(lambda: svc.get_function("fn").last_update_status == "Successful")
    assert node.prepared[-1].timeout_s == 5


def test_delete_retires_everything(svc, node, zips) -> None:  # type: ignore[no-untyped-def]
    _active(svc, zips)
    node.write_log("fn", "inst", "hello")
    svc.delete_function("fn")
    assert node.retired[-1] == ("fn", None)
    assert not node.function_logs.path("fn").exists()
    with pytest.raises(NotFound):
        svc.get_function("fn")


def test_recreated_function_stays_warm(tmp_path, zips) -> None:  # type: ignore[no-untyped-def]
    """Delete then create the same name: the new function's instances are reused (regression:
    the delete's retire(name, None) used to mark every later revision stale, so each
    invocation cold-started and its instance was stopped right after)."""
    from slfaas.gpu_node.config import NodeConfig
    from slfaas.gpu_node.node import Node
    from tests.gpu_node.fakes import FakeSandboxFactory

    factory = FakeSandboxFactory()
    agent = Node(NodeConfig(data_dir=tmp_path / "node"), factory)
    registry = Registry(f"sqlite:///{tmp_path / 'r.db'}")
    try:
        svc = FunctionService(registry, agent, tmp_path / "code")
        _active(svc, zips)
        first = svc.invoke("fn", None, b"{}")
        svc.delete_function("fn")
        assert factory.sandboxes[0].exited
        _active(svc, zips)
        a = svc.invoke("fn", None, b"{}")
        b = svc.invoke("fn", None, b"{}")
        assert first.function_error is None and a.function_error is None and b.function_error is None
        ia, ib = (registry.get_invocation(x.request_id) for x in (a, b))
        assert (ia.cold_start, ib.cold_start) == (True, False)
        assert ia.instance_id == ib.instance_id
        assert len(agent.describe().instances) == 1
    finally:
        agent.shutdown()
        registry.close()
