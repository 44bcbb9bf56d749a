"""Node.cancel: the work of a request whose caller went away stops (fake sandboxes whose
runtimes speak the real Runtime API)."""
from __future__ import annotations

import threading
from pathlib import Path

import pytest

from slfaas.gpu_node.config import NodeConfig
from slfaas.gpu_node.node import Node
from tests.gpu_node.fakes import SIGKILL_CODE, FakeSandboxFactory, make_request, make_spec, wait_until


@pytest.fixture
def node(tmp_path: Path, tiny_assets):  # type: ignore[no-untyped-def]
    factory = FakeSandboxFactory()
    agent = Node(NodeConfig(data_dir=tmp_path / "node"), factory)
    code_dir = tmp_path / "code"
    code_dir.mkdir()
    yield agent, factory, tiny_assets.base, code_dir
    agent.shutdown()


def _in_background(agent: Node, request) -> tuple[threading.Thread, list]:  # type: ignore[no-untyped-def]
    results: list = []
    t = threading.Thread(target=lambda: results.append(agent.invoke(request)))
    t.start()
    return t, results


def test_a_running_invocation_is_stopped_with_its_instance(node) -> None:  # type: ignore[no-untyped-def]
    agent, factory, base, code_dir = node
    spec = make_spec(base, code_dir, timeout_s=60)
    request = make_request(spec, {"do": "hang"})
    t, results = _in_background(agent, request)
    factory.wait_entered(1)
    assert agent.cancel(request.request_id) is True
    t.join(10)
    [result] = results
    assert result.function_error == "Unhandled" and result.error_type == "Runtime.Cancelled"
    assert factory.sandboxes[0].exit_code == SIGKILL_CODE       # the function does not keep running
    assert wait_until(lambda: agent.describe().instances == (), 5)
    assert agent.cancel(request.request_id) is False            # over: nothing to stop
    assert agent.cancel("never-seen") is False
    assert "CANCELLED RequestId: " + request.request_id in agent.logs("fn").text


def test_a_request_cancelled_during_its_cold_start_is_never_dispatched(node) -> None:  # type: ignore[no-untyped-def]
    agent, factory, base, code_dir = node
    spec = make_spec(base, code_dir, env={"FAKE_INIT": "gate:init"})
    request = make_request(spec)
    t, results = _in_background(agent, request)
    # False until the node works on it (the control plane asks again); the cold start waits at its gate
    assert wait_until(lambda: agent.cancel(request.request_id), 5)
    factory.gate("init").set()
    t.join(10)
    [result] = results
    assert result.error_type == "Runtime.Cancelled"
    [sandbox] = factory.sandboxes
    assert sandbox.handled == []                                 # the runtime never saw it
    [instance] = agent.describe().instances
    assert instance.state == "IDLE"                              # the cold start serves the next caller
    warm = agent.invoke(make_request(spec))
    assert warm.function_error is None and warm.cold_start is False and sandbox.handled == [warm.request_id]
