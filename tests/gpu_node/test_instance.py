"""The instance state machine, and the Runtime API server on its own (no agent)."""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from slfaas.functions.runtime_client import NodeGone, RuntimeClient, _UnixConnection
from slfaas.gpu_node.lifecycle.instance import (_ALLOWED, IllegalTransition, Instance, InstanceState, describe_exit,
                                      error_payload)
from slfaas.gpu_node.runtime_api import RuntimeApiServer
from tests.gpu_node.fakes import make_request, make_spec

S = InstanceState


def _instance(reserved: bool = True, timeout_s: int = 5) -> Instance:
    return Instance("inst-1", make_spec(Path("/nonexistent"), Path("/nonexistent"), timeout_s=timeout_s),
                    reserved_for="r0" if reserved else None)


def _force(inst: Instance, *path: InstanceState) -> None:
    for state in path:
        with inst._lock:
            inst._move(state)


@pytest.mark.parametrize("path, illegal", [
    ((), S.STOPPED),                               # STARTING cannot skip STOPPING
    ((S.IDLE,), S.STARTING),                       # nothing goes back to STARTING
    ((S.IDLE,), S.STOPPED),
    ((S.IDLE, S.BUSY), S.STARTING),
    ((S.STOPPING,), S.IDLE),                       # a stopping instance takes no more work
    ((S.STOPPING,), S.FAILED),
    ((S.FAILED,), S.IDLE),                         # a failed instance is never reused
    ((S.FAILED,), S.BUSY),
    ((S.STOPPING, S.STOPPED), S.STOPPING),         # STOPPED is final
    ((S.STOPPING, S.STOPPED), S.IDLE),
])
def test_illegal_transitions_raise(path, illegal) -> None:  # type: ignore[no-untyped-def]
    inst = _instance()
    _force(inst, *path)
    before = inst.state
    with pytest.raises(IllegalTransition):
        _force(inst, illegal)
    assert inst.state is before  # unchanged


def test_transition_table_is_closed_and_stopped_is_final() -> None:
    assert set(_ALLOWED) == set(InstanceState)
    assert _ALLOWED[S.STOPPED] == set()
    for state, targets in _ALLOWED.items():
        assert S.STARTING not in targets
        if state is not S.STOPPING and state is not S.FAILED:
            assert S.STOPPED not in targets  # only via STOPPING (or FAILED)


def test_public_lifecycle_follows_the_machine() -> None:
    inst = _instance(reserved=False)
    assert inst.reserve("r1") is False  # STARTING is not reservable
    assert inst.wait_ready(0.01) is False
    threading.Timer(0.05, lambda: inst._queue.put(None)).start()
    assert inst.next_delivery() is None  # first /next ends init
    assert inst.state is S.IDLE and inst.init_duration_ms is not None
    assert inst.wait_ready(0) is True
    assert inst.reserve("r1") is True and inst.state is S.BUSY
    assert inst.reserve("r2") is False  # never two callers in one instance
    inst.release("r1")
    assert inst.state is S.IDLE
    assert inst.begin_stop() is True and inst.state is S.STOPPING
    assert inst.begin_stop() is False
    assert inst.reserve("r3") is False
    inst.mark_stopped()
    assert inst.state is S.STOPPED and not inst.alive
    inst.release("r1")  # harmless once stopped
    inst.on_exit(0)
    assert inst.state is S.STOPPED


def test_reserved_instance_ends_init_busy() -> None:
    inst = _instance(reserved=True)
    inst._queue.put(None)
    inst.next_delivery()
    assert inst.state is S.BUSY  # its cold-start caller owns it; nobody else can reserve it
    assert inst.reserve("r1") is False


def test_exit_during_init_sets_an_exit_init_error() -> None:
    inst = _instance()
    inst.on_exit(-9)
    assert inst.state is S.FAILED
    assert inst.wait_ready(0) is False
    assert inst.init_error is not None and inst.init_error.error_type == "Runtime.ExitError"
    assert json.loads(inst.init_error.payload)["errorMessage"] == "Runtime exited with error: signal: SIGKILL"
    inst.mark_stopped()
    assert inst.state is S.STOPPED


def test_run_on_dead_instance_does_not_hang() -> None:
    inst = _instance()
    _force(inst, S.FAILED)
    t0 = time.monotonic()
    outcome, _ = inst.run(make_request(inst.function), False, time.time())
    assert time.monotonic() - t0 < 1
    assert outcome.error_type == "Runtime.ExitError"


def test_late_completion_after_timeout_is_refused() -> None:
    inst = _instance(timeout_s=0)
    _force(inst, S.BUSY)
    req = make_request(inst.function)
    outcome, _ = inst.run(req, False, time.time())
    assert outcome.error_type == "Sandbox.Timedout"
    assert inst.state is S.FAILED
    assert inst.complete(req.request_id, b'{"late": true}', None) is False


@pytest.mark.parametrize("code, text", [
    (None, "Runtime exited without providing a reason"),
    (0, "Runtime exited with error: exit status 0"),
    (137, "Runtime exited with error: exit status 137"),
    (-6, "Runtime exited with error: signal: SIGABRT"),
    (-200, "Runtime exited with error: signal 200"),
])
def test_describe_exit(code, text) -> None:  # type: ignore[no-untyped-def]
    assert describe_exit(code) == text


def test_error_payload_is_lambda_shaped() -> None:
    assert json.loads(error_payload("X.Y", "msg")) == {"errorMessage": "msg", "errorType": "X.Y", "stackTrace": []}


# the Runtime API server, driven by hand
@pytest.fixture
def served(tmp_path_factory):  # type: ignore[no-untyped-def]
    import tempfile
    sock_dir = Path(tempfile.mkdtemp(prefix="slfaas-t-"))
    inst = _instance()
    api = RuntimeApiServer(sock_dir / "i.sock", inst).start()
    yield inst, api, RuntimeClient(str(sock_dir / "i.sock"))
    api.close()
    sock_dir.rmdir()


def _raw(path: str, method: str, url: str, body: bytes = b"", headers: dict | None = None) -> tuple[int, bytes]:
    conn = _UnixConnection(path)
    try:
        conn.request(method, url, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_runtime_api_rejects_unknown_paths_and_request_ids(served) -> None:  # type: ignore[no-untyped-def]
    inst, api, client = served
    path = str(api.socket_path)
    assert _raw(path, "GET", "/2018-06-01/runtime/invocation/other")[0] == 404
    assert _raw(path, "POST", "/2018-06-01/runtime/nope", b"{}")[0] == 404
    status, body = _raw(path, "POST", "/2018-06-01/runtime/invocation/not-a-request/response", b"{}")
    assert status == 400 and json.loads(body)["errorType"] == "InvalidRequestID"
    too_big = _raw(path, "POST", "/2018-06-01/runtime/invocation/x/response", b"",
                   {"Content-Length": str(7 * 1024 * 1024)})
    assert too_big[0] == 413


def test_runtime_api_next_blocks_until_stop(served) -> None:  # type: ignore[no-untyped-def]
    inst, _api, client = served
    errors: list[BaseException] = []

    def loop() -> None:
        try:
            client.next()
        except NodeGone as exc:
            errors.append(exc)

    t = threading.Thread(target=loop)
    t.start()
    assert inst._ready.wait(5)  # the first /next ended init
    time.sleep(0.1)
    assert t.is_alive()  # and it waits for work
    inst.begin_stop()
    t.join(5)
    assert len(errors) == 1 and "410" in str(errors[0])


def test_runtime_api_init_error_reaches_the_instance(served) -> None:  # type: ignore[no-untyped-def]
    inst, _api, client = served
    client.init_error({"errorType": "Runtime.HandlerNotFound", "errorMessage": "no handler"})
    assert inst.state is S.FAILED
    assert inst.init_error is not None and inst.init_error.error_type == "Runtime.HandlerNotFound"
    assert json.loads(inst.init_error.payload)["errorMessage"] == "no handler"


def test_runtime_init_report_reaches_the_instance(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The slfaas extension of the Runtime API: a runtime reports its init facts (adapter
    bytes, phase timings); malformed reports are refused without touching the instance."""
    import http.client
    import socket

    from slfaas.functions.runtime_client import RuntimeClient
    from slfaas.gpu_node.lifecycle.instance import Instance
    from slfaas.gpu_node.runtime_api import RuntimeApiServer
    from slfaas.gpu_node.types import FunctionSpec

    fs = FunctionSpec("f", "$LATEST", "r", "arn", tmp_path, tmp_path, "h", 60, 128, {})
    inst = Instance("i-report", fs)
    api = RuntimeApiServer(tmp_path / "r.sock", inst).start()
    try:
        RuntimeClient(str(tmp_path / "r.sock")).init_report(
            {"adapter_bytes": 4096, "init_s": 1.5, "nested": {"dropped": True}})
        assert inst.init_facts == {"adapter_bytes": 4096, "init_s": 1.5}

        class _Conn(http.client.HTTPConnection):
            def connect(self) -> None:
                self.sock = socket.socket(socket.AF_UNIX)
                self.sock.connect(str(tmp_path / "r.sock"))

        for body in (b"not json", b"[1, 2]"):
            conn = _Conn("localhost")
            conn.request("POST", "/2018-06-01/runtime/slfaas/init-report", body=body)
            assert conn.getresponse().status == 400
            conn.close()
        assert inst.init_facts == {"adapter_bytes": 4096, "init_s": 1.5}
    finally:
        api.close()
