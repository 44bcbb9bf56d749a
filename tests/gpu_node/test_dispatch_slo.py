"""The dispatcher under the SLO scheduler: requests wait in queues, a timer runs the scheduler
at its deadlines, a batch starts one instance for all its requests, and a queue-time bound
answers 429 (real Instance objects and a real Node with fake sandboxes; no sleeps: each
wait below is bounded by a decision the scheduler must make)."""
from __future__ import annotations

import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from slfaas.errors import TooManyRequests
from slfaas.gpu_node.config import NodeConfig
from slfaas.gpu_node.dispatch import Dispatcher, Placed, _Waker
from slfaas.gpu_node.lifecycle.instance import Instance, InstanceState
from slfaas.gpu_node.lifecycle.table import InstanceTable
from slfaas.gpu_node.node import Node
from slfaas.gpu_node.policy.latency import LatencyModel, LatencyPrior
from slfaas.gpu_node.policy.slo_scheduler import SloConfig, SloScheduler
from slfaas.gpu_node.resources.backbone import BackboneOwner
from tests.gpu_node.fakes import FakeSandboxFactory, make_request, make_spec, wait_until

SPEC = replace(make_spec(Path("/nonexistent"), Path("/nonexistent"), name="a"), max_batch_size=2, ttft_slo_ms=600)


def _scheduler(**config) -> SloScheduler:  # type: ignore[no-untyped-def]
    return SloScheduler(SloConfig(**config), LatencyModel(prior=LatencyPrior(t0_ms=10.0, cold_start_ms=100.0)))


def _full_instance(table: InstanceTable) -> Instance:
    inst = Instance("a-1", SPEC, capacity=2)
    with inst._lock:
        inst._move(InstanceState.IDLE)
    assert inst.reserve("x1") and inst.reserve("x2")
    table.add(inst)
    return inst


def _submit_in_thread(d: Dispatcher, request) -> tuple[threading.Thread, list]:  # type: ignore[no-untyped-def]
    got: list = []

    def run() -> None:
        try:
            got.append(d.submit(request, timeout_s=30))
        except TooManyRequests as exc:
            got.append(exc)
    t = threading.Thread(target=run)
    t.start()
    return t, got


def test_the_waker_ticks_at_the_armed_time() -> None:
    ticked = threading.Event()
    waker = _Waker(ticked.set, time.time)
    waker.arm(None)
    waker.arm(time.time() + 0.05)
    assert ticked.wait(10)
    waker.close()


def test_a_lone_request_behind_a_full_instance_starts_another_when_its_slack_runs_out() -> None:
    table = InstanceTable()
    _full_instance(table)
    d = Dispatcher(_scheduler(), table, 4, stop=lambda i: None)
    t0 = time.time()
    placed = d.submit(make_request(SPEC), timeout_s=30)
    # nothing happened meanwhile: the timer ran the round at SLO − cold start − T(1) = 0.49 s
    assert time.time() - t0 >= 0.45
    assert placed.cold and placed.instance.instance_id != "a-1"
    d.close()


def test_a_full_batch_starts_one_instance_for_all_of_it() -> None:
    table = InstanceTable()
    _full_instance(table)
    d = Dispatcher(_scheduler(), table, 4, stop=lambda i: None)
    first, got1 = _submit_in_thread(d, make_request(SPEC))
    assert wait_until(lambda: d.waiting() == 1)
    second, got2 = _submit_in_thread(d, make_request(SPEC))   # a full batch (capacity 2) waits: scale out
    first.join(10)
    second.join(10)
    [p1], [p2] = got1, got2
    assert isinstance(p1, Placed) and isinstance(p2, Placed)
    assert p1.instance is p2.instance and p1.instance.inflight == 2
    assert sorted([p1.cold, p2.cold]) == [False, True]        # one starts it, the other rides along
    d.close()


def test_a_request_that_waits_past_the_queue_bound_gets_429_with_retry_after() -> None:
    table = InstanceTable()
    other = Instance("b-1", replace(SPEC, name="b", revision_id="rb"), capacity=1)
    with other._lock:
        other._move(InstanceState.IDLE)
    assert other.reserve("busy")
    table.add(other)
    d = Dispatcher(_scheduler(max_queue_s=0.3), table, 1, stop=lambda i: None)
    with pytest.raises(TooManyRequests) as exc:
        d.submit(make_request(SPEC), timeout_s=30)
    assert exc.value.reason == "QueueTimeLimitExceeded" and exc.value.retry_after_s is not None
    assert d.waiting() == 0
    d.close()


def test_a_full_node_queues_a_request_until_an_instance_frees_instead_of_refusing(
        tmp_path: Path, tiny_assets) -> None:  # type: ignore[no-untyped-def]
    factory = FakeSandboxFactory()
    node = Node(NodeConfig(data_dir=tmp_path / "node", max_instances=1, scheduler="slo"), factory, BackboneOwner())
    try:
        a = make_spec(tiny_assets.base, tiny_assets.base, name="a")
        b = make_spec(tiny_assets.base, tiny_assets.base, name="b")
        results: dict[str, object] = {}
        ta = threading.Thread(target=lambda: results.__setitem__("a", node.invoke(make_request(a, {"do": "gate", "gate": "a"}))))
        ta.start()
        factory.wait_entered(1)
        tb = threading.Thread(target=lambda: results.__setitem__("b", node.invoke(make_request(b))))
        tb.start()
        assert wait_until(lambda: node.dispatcher.waiting() == 1)   # b waits (FCFS would refuse it)
        factory.gate("a").set()
        ta.join(10)
        tb.join(10)
        assert getattr(results["a"], "function_error") is None and getattr(results["b"], "function_error") is None
        assert getattr(results["b"], "cold_start") is True     # a's idle instance made room for it
        assert node.queued() == {}
    finally:
        node.shutdown()


def test_closing_refuses_the_requests_still_waiting() -> None:
    table = InstanceTable()
    _full_instance(table)
    d = Dispatcher(_scheduler(max_queue_s=600), table, 1, stop=lambda i: None)
    t, got = _submit_in_thread(d, make_request(replace(SPEC, ttft_slo_ms=600_000)))
    assert wait_until(lambda: d.waiting() == 1)
    d.close()
    t.join(10)
    [err] = got
    assert isinstance(err, TooManyRequests) and err.reason == "NodeShuttingDown"


def test_a_waiting_request_whose_caller_left_ends_at_once_as_cancelled() -> None:
    from slfaas.errors import InvocationCancelled

    table = InstanceTable()
    _full_instance(table)
    d = Dispatcher(_scheduler(max_queue_s=600), table, 1, stop=lambda i: None)
    request = make_request(replace(SPEC, ttft_slo_ms=600_000))
    got: list = []
    t = threading.Thread(target=lambda: got.append(pytest.raises(InvocationCancelled, d.submit, request, 600)))
    t.start()
    assert wait_until(lambda: d.waiting() == 1)
    assert d.abort(request.request_id) is True
    t.join(10)                              # at once, not after its 600-s wait
    assert not t.is_alive() and len(got) == 1 and d.waiting() == 0
    assert d.abort(request.request_id) is False
    d.close()
