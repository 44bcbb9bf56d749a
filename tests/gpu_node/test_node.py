"""Node + Instance + Runtime API, with fake sandboxes whose runtimes speak the real API."""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from slfaas.errors import TooManyRequests
from slfaas.gpu_node.config import NodeConfig
from slfaas.gpu_node.node import Node
from slfaas.gpu_node.resources.backbone import BackboneOwner
from slfaas.weights.safetensors import checkpoint_tensors
from tests.gpu_node.fakes import (SIGKILL_CODE, SIGTERM_CODE, FakeSandboxFactory, make_request, make_spec,
                                  wait_until)


@pytest.fixture
def code_dir(tmp_path: Path) -> Path:
    d = tmp_path / "code"
    d.mkdir()
    return d


@pytest.fixture
def make_agent(tmp_path: Path):  # type: ignore[no-untyped-def]
    agents: list[Node] = []

    def make(**config) -> tuple[Node, FakeSandboxFactory]:  # type: ignore[no-untyped-def]
        factory = FakeSandboxFactory()
        agent = Node(NodeConfig(data_dir=tmp_path / f"node{len(agents)}", **config), factory, BackboneOwner())
        agents.append(agent)
        return agent, factory

    yield make
    for a in agents:
        a.shutdown()


@pytest.fixture
def base(tiny_assets) -> Path:  # type: ignore[no-untyped-def]
    return tiny_assets.base


def _body(result) -> dict:  # type: ignore[no-untyped-def]
    return json.loads(result.payload)


def _ids(agent: Node) -> set[str]:
    return {i.instance_id for i in list(agent.describe().instances)}


# warm reuse, revisions, runtime API round trip
def test_prepare_loads_backbone_once_and_reports_it(make_agent, base) -> None:  # type: ignore[no-untyped-def]
    agent, _ = make_agent()
    info = agent.prepare(make_spec(base, base))
    assert Path(info.model_path) == base.resolve()
    assert info.tensor_count == len(checkpoint_tensors(base))
    assert info.size_bytes > 0
    again = agent.prepare(make_spec(base, base, name="other"))
    assert again.loaded_ts == info.loaded_ts  # not loaded a second time


def test_cold_then_warm_reuses_the_instance(make_agent, base, code_dir) -> None:  # type: ignore[no-untyped-def]
    agent, factory = make_agent()
    spec = make_spec(base, code_dir)
    first = agent.invoke(make_request(spec, {"do": "echo", "n": 1}, client_context="ctx-1"))
    second = agent.invoke(make_request(spec, {"do": "echo", "n": 2}))

    assert first.function_error is None and second.function_error is None
    assert first.cold_start is True and first.init_duration_ms is not None
    assert second.cold_start is False and second.init_duration_ms is None
    assert second.instance_id == first.instance_id
    assert len(factory.sandboxes) == 1
    # what the runtime received over the socket: payload, cold flag, ARN, context, deadline
    b1, b2 = _body(first), _body(second)
    assert b1["echo"] == {"do": "echo", "n": 1} and b2["echo"] == {"do": "echo", "n": 2}
    assert b1["request_id"] == first.request_id
    assert (b1["cold_start"], b2["cold_start"]) == (True, False)
    assert b1["arn"] == spec.arn
    assert b1["client_context"] == "ctx-1" and b2["client_context"] is None
    assert abs(b1["deadline_ms"] / 1000 - (first.start_ts + spec.timeout_s)) < 2
    [info] = list(agent.describe().instances)
    assert (info.state, info.invocations, info.revision_id) == ("IDLE", 2, "r1")
    assert info.pid == factory.sandboxes[0].pid
    # the runtime's own output and the node's START/END/REPORT lines reach the function log
    log = agent.logs(spec.name).text
    assert "fake runtime" in log
    for rid in (first.request_id, second.request_id):
        assert f"START RequestId: {rid}" in log and f"END RequestId: {rid}" in log
        assert f"REPORT RequestId: {rid}" in log
    assert "Init Duration" in log


def test_runtime_error_is_a_function_error_and_instance_stays_warm(make_agent, base, code_dir) -> None:  # type: ignore[no-untyped-def]
    agent, factory = make_agent()
    spec = make_spec(base, code_dir)
    bad = agent.invoke(make_request(spec, {"do": "error", "type": "KeyError", "message": "no such key"}))
    assert bad.function_error == "Unhandled"
    assert bad.error_type == "KeyError"
    assert _body(bad)["errorMessage"] == "no such key"
    good = agent.invoke(make_request(spec))
    assert good.function_error is None and good.cold_start is False
    assert good.instance_id == bad.instance_id
    assert f"ERROR RequestId: {bad.request_id} KeyError: no such key" in agent.logs(spec.name).text
    assert factory.sandboxes[0].exited is False


def test_new_revision_gets_a_new_instance(make_agent, base, code_dir) -> None:  # type: ignore[no-untyped-def]
    agent, factory = make_agent()
    r1 = agent.invoke(make_request(make_spec(base, code_dir, revision="r1")))
    r2 = agent.invoke(make_request(make_spec(base, code_dir, revision="r2")))
    assert r2.cold_start is True
    assert r2.instance_id != r1.instance_id
    assert len(factory.sandboxes) == 2
    assert {i.revision_id for i in list(agent.describe().instances)} == {"r1", "r2"}
    # and each revision keeps reusing its own instance
    again = agent.invoke(make_request(make_spec(base, code_dir, revision="r1")))
    assert (again.instance_id, again.cold_start) == (r1.instance_id, False)


# retire, keep-alive, shutdown
def test_retire_stops_idle_instances_except_kept_revision(make_agent, base, code_dir) -> None:  # type: ignore[no-untyped-def]
    agent, factory = make_agent()
    old = agent.invoke(make_request(make_spec(base, code_dir, revision="r1")))
    new = agent.invoke(make_request(make_spec(base, code_dir, revision="r2")))
    other = agent.invoke(make_request(make_spec(base, code_dir, name="other")))

    assert agent.retire("fn", keep_revision="r2") == 1
    assert _ids(agent) == {new.instance_id, other.instance_id}
    sb_old = factory.for_instance(old.instance_id)
    assert sb_old.stop_calls == 1 and sb_old.exit_code == SIGTERM_CODE
    assert not factory.for_instance(new.instance_id).exited
    assert not factory.for_instance(other.instance_id).exited


def test_retire_of_busy_instance_stops_it_after_its_invocation(make_agent, base, code_dir) -> None:  # type: ignore[no-untyped-def]
    agent, factory = make_agent()
    spec = make_spec(base, code_dir, revision="r1")
    results: list = []
    t = threading.Thread(target=lambda: results.append(agent.invoke(make_request(spec, {"do": "gate", "gate": "g"}))))
    t.start()
    factory.wait_entered(1)
    assert agent.retire("fn", keep_revision="r2") == 0  # busy: not stopped under the caller
    assert not factory.sandboxes[0].exited
    factory.gate("g").set()
    t.join(10)
    [result] = results
    assert result.function_error is None  # the invocation finished normally
    assert factory.sandboxes[0].exit_code == SIGTERM_CODE  # then it was stopped as stale
    assert list(agent.describe().instances) == []


def test_retire_everything_stops_all_revisions(make_agent, base, code_dir) -> None:  # type: ignore[no-untyped-def]
    agent, factory = make_agent()
    agent.invoke(make_request(make_spec(base, code_dir, revision="r1")))
    agent.invoke(make_request(make_spec(base, code_dir, revision="r2")))
    assert agent.retire("fn", keep_revision=None) == 2
    assert list(agent.describe().instances) == []
    assert all(s.exit_code == SIGTERM_CODE for s in factory.sandboxes)


def test_keep_alive_reaper_stops_idle_instance(make_agent, base, code_dir) -> None:  # type: ignore[no-untyped-def]
    agent, factory = make_agent(keep_alive_s=0.2)
    spec = make_spec(base, code_dir)
    # busy longer than keep_alive_s: a busy instance is never reaped
    slow = agent.invoke(make_request(spec, {"do": "echo", "sleep": 0.5}))
    assert slow.function_error is None
    assert slow.duration_ms >= 500
    assert wait_until(lambda: list(agent.describe().instances) == [], timeout_s=5)
    sb = factory.sandboxes[0]
    assert sb.exit_code == SIGTERM_CODE and sb.kill_calls == 0
    assert sb.stopped_ts is not None
    assert sb.stopped_ts - slow.end_ts >= 0.2  # only after keep_alive_s of idleness
    # the next invocation is a cold start on a fresh instance
    nxt = agent.invoke(make_request(spec))
    assert nxt.cold_start is True and nxt.instance_id != slow.instance_id


def test_shutdown_stops_every_sandbox(make_agent, base, code_dir) -> None:  # type: ignore[no-untyped-def]
    agent, factory = make_agent()
    for name, rev in (("a", "r1"), ("a", "r2"), ("b", "r1")):
        agent.invoke(make_request(make_spec(base, code_dir, name=name, revision=rev)))
    socket_dir = agent.launcher.socket_dir
    assert len(list(agent.describe().instances)) == 3
    assert len(list(socket_dir.glob("*.sock"))) == 3
    agent.shutdown()
    assert list(agent.describe().instances) == []
    assert len(factory.sandboxes) == 3
    assert all(s.exit_code == SIGTERM_CODE for s in factory.sandboxes)
    assert factory.closed
    assert not socket_dir.exists()
    assert agent.backbones.loaded() == []


# failures
def test_timeout_kills_the_instance(make_agent, base, code_dir) -> None:  # type: ignore[no-untyped-def]
    agent, factory = make_agent()
    spec = make_spec(base, code_dir, timeout_s=1)
    t0 = time.monotonic()
    result = agent.invoke(make_request(spec, {"do": "hang"}))
    elapsed = time.monotonic() - t0
    assert 0.9 <= elapsed < 5
    assert result.function_error == "Unhandled"
    assert result.error_type == "Sandbox.Timedout"
    assert _body(result)["errorMessage"] == "Task timed out after 1.00 seconds"
    sb = factory.sandboxes[0]
    assert sb.kill_calls >= 1 and sb.exit_code == SIGKILL_CODE
    assert wait_until(lambda: list(agent.describe().instances) == [])
    nxt = agent.invoke(make_request(spec))
    assert nxt.function_error is None and nxt.cold_start is True and nxt.instance_id != result.instance_id


@pytest.mark.parametrize("code, described", [
    (3, "Runtime exited with error: exit status 3"),
    (-11, "Runtime exited with error: signal: SIGSEGV"),
])
def test_exit_mid_invocation_is_runtime_exit_error(make_agent, base, code_dir, code, described) -> None:  # type: ignore[no-untyped-def]
    agent, factory = make_agent()
    spec = make_spec(base, code_dir)
    result = agent.invoke(make_request(spec, {"do": "exit", "code": code}))
    assert result.function_error == "Unhandled"
    assert result.error_type == "Runtime.ExitError"
    assert _body(result)["errorMessage"] == described
    assert factory.sandboxes[0].exit_code == code
    assert wait_until(lambda: list(agent.describe().instances) == [])
    assert "instance exited unexpectedly" in agent.logs(spec.name).text
    nxt = agent.invoke(make_request(spec))
    assert nxt.function_error is None and nxt.cold_start is True


def test_init_error_is_a_function_error_with_its_type(make_agent, base, code_dir) -> None:  # type: ignore[no-untyped-def]
    agent, factory = make_agent()
    spec = make_spec(base, code_dir, env={"FAKE_INIT": "error"})
    result = agent.invoke(make_request(spec))
    assert result.function_error == "Unhandled"
    assert result.error_type == "Runtime.ImportModuleError"
    assert _body(result)["errorMessage"] == "Unable to import module 'handler'"
    assert result.cold_start is True
    assert factory.sandboxes[0].handled == []  # the request never reached the runtime
    assert wait_until(lambda: list(agent.describe().instances) == [])


def test_exit_during_init_is_runtime_exit_error(make_agent, base, code_dir) -> None:  # type: ignore[no-untyped-def]
    agent, _ = make_agent()
    result = agent.invoke(make_request(make_spec(base, code_dir, env={"FAKE_INIT": "exit:2"})))
    assert result.error_type == "Runtime.ExitError"
    assert _body(result)["errorMessage"] == "Runtime exited with error: exit status 2"
    assert wait_until(lambda: list(agent.describe().instances) == [])


def test_init_timeout_kills_the_instance(make_agent, base, code_dir) -> None:  # type: ignore[no-untyped-def]
    agent, factory = make_agent(init_timeout_s=0.3)
    result = agent.invoke(make_request(make_spec(base, code_dir, env={"FAKE_INIT": "hang"})))
    assert result.error_type == "Runtime.InitTimeout"
    assert factory.sandboxes[0].exit_code == SIGKILL_CODE
    assert wait_until(lambda: list(agent.describe().instances) == [])


def test_sandbox_start_failure_is_start_error(make_agent, base, code_dir) -> None:  # type: ignore[no-untyped-def]
    agent, factory = make_agent()
    factory.fail_start = OSError("no container runtime")
    result = agent.invoke(make_request(make_spec(base, code_dir)))
    assert result.error_type == "Runtime.StartError"
    assert "no container runtime" in _body(result)["errorMessage"]
    assert list(agent.describe().instances) == []
    assert list(agent.launcher.socket_dir.glob("*.sock")) == []  # its Runtime API was closed
    factory.fail_start = None
    assert agent.invoke(make_request(make_spec(base, code_dir))).function_error is None


def test_invoke_right_after_an_idle_instance_died_starts_a_fresh_one(make_agent, base, code_dir) -> None:  # type: ignore[no-untyped-def]
    """The window between a runtime's death and the node noticing it: the request was handed to
    a dead /next connection, so nothing ran, and it is placed again on a fresh instance."""
    agent, factory = make_agent()
    spec = make_spec(base, code_dir)
    first = agent.invoke(make_request(spec))
    sb = factory.for_instance(first.instance_id)
    assert wait_until(lambda: sb._client is not None and sb._client.waiting_for_work())   # back in /next
    factory.hold_exit_reports = True
    sb.crash_silently()
    [info] = agent.describe().instances
    assert info.state == "IDLE"                     # the node has not noticed the death yet
    results: list = []
    t = threading.Thread(target=lambda: results.append(agent.invoke(make_request(spec, {"do": "echo", "n": 2}))))
    t.start()
    inst = agent.table.get(first.instance_id)
    assert inst is not None and wait_until(lambda: inst.failed_deliveries == 1)
    factory.release_exit_reports()                  # now the watcher sees the exit
    t.join(10)
    [result] = results
    assert result.function_error is None, result.payload
    assert result.cold_start is True and result.instance_id != first.instance_id
    assert _body(result)["echo"] == {"do": "echo", "n": 2}
    assert len(factory.sandboxes) == 2


# capacity and concurrency
def test_max_instances_all_busy_is_too_many_requests(make_agent, base, code_dir) -> None:  # type: ignore[no-untyped-def]
    agent, factory = make_agent(max_instances=1)
    a = make_spec(base, code_dir, name="a")
    results: list = []
    t = threading.Thread(target=lambda: results.append(agent.invoke(make_request(a, {"do": "gate", "gate": "a"}))))
    t.start()
    factory.wait_entered(1)
    with pytest.raises(TooManyRequests) as exc:
        agent.invoke(make_request(make_spec(base, code_dir, name="b")))
    assert exc.value.reason == "ConcurrentInvocationLimitExceeded"
    with pytest.raises(TooManyRequests):  # the same function cannot share the busy instance either
        agent.invoke(make_request(a))
    assert len(factory.sandboxes) == 1
    factory.gate("a").set()
    t.join(10)
    assert results[0].function_error is None
    assert not factory.sandboxes[0].exited  # the refusals did not disturb it


def test_max_instances_evicts_the_idle_one(make_agent, base, code_dir) -> None:  # type: ignore[no-untyped-def]
    agent, factory = make_agent(max_instances=2)
    a = agent.invoke(make_request(make_spec(base, code_dir, name="a")))
    time.sleep(0.01)
    b = agent.invoke(make_request(make_spec(base, code_dir, name="b")))
    c = agent.invoke(make_request(make_spec(base, code_dir, name="c")))
    assert c.function_error is None and c.cold_start is True
    # the least recently used idle instance (a) made room
    assert _ids(agent) == {b.instance_id, c.instance_id}
    assert factory.for_instance(a.instance_id).exit_code == SIGTERM_CODE
    assert not factory.for_instance(b.instance_id).exited


def test_concurrent_invokes_each_get_their_own_instance(make_agent, base, code_dir) -> None:  # type: ignore[no-untyped-def]
    agent, factory = make_agent()
    spec = make_spec(base, code_dir)
    n = 4
    results: list = []
    lock = threading.Lock()

    def call() -> None:
        r = agent.invoke(make_request(spec, {"do": "gate", "gate": "go"}))
        with lock:
            results.append(r)

    threads = [threading.Thread(target=call) for _ in range(n)]
    for t in threads:
        t.start()
    factory.wait_entered(n)  # all n are inside a runtime at the same time
    busy = list(agent.describe().instances)
    assert len(busy) == n and {i.state for i in busy} == {"BUSY"}
    factory.gate("go").set()
    for t in threads:
        t.join(10)
    assert len(results) == n
    assert all(r.function_error is None and r.cold_start for r in results)
    assert len({r.instance_id for r in results}) == n
    assert all(len(s.handled) == 1 for s in factory.sandboxes)
    # the payload each caller got back is its own request's
    assert all(_body(r)["request_id"] == r.request_id for r in results)
    # afterwards all n are warm and idle
    assert {i.state for i in list(agent.describe().instances)} == {"IDLE"}
