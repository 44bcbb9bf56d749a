"""The SLO scheduler's decisions from snapshots and clock values alone: batch sizing against
the tightest slack, holding and closing batches, least-slack order with the fairness tie-break,
the bound on running batches, scale-out, backpressure and what it learns from finished requests."""
from __future__ import annotations

import pytest

from slfaas.gpu_node.policy.latency import LatencyModel, LatencyPrior
from slfaas.gpu_node.policy.scheduling import Assign, Finished, PendingRequest, StartFor
from slfaas.gpu_node.policy.slo_scheduler import SloConfig, SloScheduler
from slfaas.gpu_node.policy.view import GpuView, InstanceView, NodeSnapshot

A, B, C = ("a", "r1"), ("b", "r1"), ("c", "r1")


def model(t0_ms: float = 100.0, alpha_ms: float = 50.0, cold_ms: float = 1000.0) -> LatencyModel:
    """A model that has seen batches of T(b) = t0 + alpha·(b − 1)."""
    m = LatencyModel(prior=LatencyPrior(t0_ms=t0_ms, alpha_share=alpha_ms / t0_ms, cold_start_ms=cold_ms))
    return m


def sched(**config) -> SloScheduler:  # type: ignore[no-untyped-def]
    return SloScheduler(SloConfig(**{"contention_penalty": 0.0, **config}), model())


def idle(iid: str, key=A, capacity: int = 8, used: float = 1.0) -> InstanceView:  # type: ignore[no-untyped-def]
    return InstanceView(iid, key, "IDLE", used, 0, capacity)


def busy(iid: str, key=A, inflight: int = 1, capacity: int = 8) -> InstanceView:  # type: ignore[no-untyped-def]
    return InstanceView(iid, key, "BUSY", 1.0, inflight, capacity)


def req(rid: str, key=A, t: float = 10.0, slo_ms: float | None = 400.0, capacity: int = 8,  # type: ignore[no-untyped-def]
        tokens: int = 100) -> PendingRequest:
    return PendingRequest(rid, key, t, slo_ms, capacity, tokens)


def snap(now: float, *instances: InstanceView, max_instances: int = 8, gpu: GpuView | None = None) -> NodeSnapshot:
    return NodeSnapshot(now, tuple(instances), max_instances, gpu)


def test_a_lone_request_is_placed_at_once_as_fcfs_would() -> None:
    s = sched()
    s.add_request(req("r1", capacity=1))
    out = s.schedule(snap(10.0, idle("a1", capacity=1)))
    assert out.assign == (Assign("r1", "a1"),) and s.waiting_keys() == frozenset()
    s.add_request(req("r2", B, capacity=8))      # batching allowed, but nothing else is coming
    out = s.schedule(snap(10.0, idle("b1", B)))
    assert out.assign == (Assign("r2", "b1"),)
    s.add_request(req("r3", C, capacity=1))      # no instance: a cold start at once
    assert s.schedule(snap(10.0)).start == (StartFor("r3"),)


def test_a_burst_batch_closes_at_the_largest_size_that_meets_the_tightest_slack() -> None:
    s = sched()
    # T(b) = 100 + 50(b − 1) ≤ 400 ms of slack: b ≤ 7
    for i in range(9):
        s.add_request(req(f"r{i}", t=10.0))
    out = s.schedule(snap(10.0, idle("a1")))
    assert [a.request_id for a in out.assign] == [f"r{i}" for i in range(7)]
    assert {a.instance_id for a in out.assign} == {"a1"}
    # the rest neither joins the batch just sized nor starts an instance that cannot meet its SLO
    assert out.start == () and s.waiting_keys() == frozenset({A})
    out = s.schedule(snap(10.01, busy("a1", A, inflight=7)))
    assert out.assign == (Assign("r7", "a1"),)            # next round: it joins the running batch


def test_a_held_batch_closes_when_its_slack_runs_out() -> None:
    s = sched()
    for i in range(4):     # a burst of 4 (arrivals keep coming): a batch of up to 7 is worth waiting for
        s.add_request(req(f"r{i}", t=10.0 + i * 0.001))
    out = s.schedule(snap(10.003, idle("a1")))
    assert out.assign == ()
    # the latest start that still meets r0's deadline with 4: 10.4 − T(4) = 10.4 − 0.25
    assert s.next_deadline_s() == pytest.approx(10.15)
    out = s.schedule(snap(10.15, idle("a1")))
    assert [a.request_id for a in out.assign] == ["r0", "r1", "r2", "r3"]
    assert s.next_deadline_s() is None


def test_when_the_slo_is_lost_already_the_batch_takes_all_the_room() -> None:
    s = sched()
    for i in range(5):
        s.add_request(req(f"r{i}", t=10.0, slo_ms=50.0))   # T(1) = 100 ms > 50 ms
    out = s.schedule(snap(10.0, idle("a1", capacity=4)))
    assert len(out.assign) == 4


def test_least_slack_goes_first_when_one_batch_may_start() -> None:
    s = sched(max_running_batches=2)
    s.add_request(req("loose", A, t=10.0, slo_ms=5000.0, capacity=1))
    s.add_request(req("tight", B, t=10.0, slo_ms=300.0, capacity=1))
    out = s.schedule(snap(10.0, busy("c1", C), idle("a1", A, 1), idle("b1", B, 1)))
    assert out.assign == (Assign("tight", "b1"),)        # one place left among running batches
    assert s.waiting_keys() == frozenset({A})
    out = s.schedule(snap(10.1, idle("c1", C), busy("b1", B, 1, 1), idle("a1", A, 1)))
    assert out.assign == (Assign("loose", "a1"),)        # a batch ended: the next one goes


def test_equal_slacks_go_to_the_function_served_least() -> None:
    s = sched(max_running_batches=1)
    s.add_request(req("a1", A, capacity=1, tokens=1000))
    s.add_request(req("b1", B, capacity=1, tokens=10))
    out = s.schedule(snap(10.0, idle("ia", A, 1), idle("ib", B, 1)))
    assert out.assign == (Assign("a1", "ia"),)          # a tie on everything: by name
    s.add_request(req("a2", A, capacity=1))               # the same deadline as b1
    out = s.schedule(snap(10.0, busy("ia", A, 1, 1), idle("ib", B, 1)))
    assert out.assign == ()                              # the one place is taken
    out = s.schedule(snap(10.01, idle("ia", A, 1), idle("ib", B, 1)))
    assert out.assign == (Assign("b1", "ib"),)           # B was served least


def test_a_tight_slo_cannot_starve_others_beyond_the_fairness_window() -> None:
    s = sched(max_running_batches=1, fairness_window_tokens=500.0)
    s.add_request(req("greedy-1", A, capacity=1, slo_ms=100.0, tokens=1000))
    s.add_request(req("patient", B, capacity=1, slo_ms=9000.0))
    out = s.schedule(snap(10.0, idle("ia", A, 1), idle("ib", B, 1)))
    assert out.assign == (Assign("greedy-1", "ia"),)    # least slack first
    s.add_request(req("greedy-2", A, t=10.0, slo_ms=100.0, capacity=1))
    out = s.schedule(snap(10.01, idle("ia", A, 1), idle("ib", B, 1)))
    assert out.assign == (Assign("patient", "ib"),)     # less slack, but too far ahead: A waits


def test_joining_a_running_batch_needs_no_new_place() -> None:
    s = sched(max_running_batches=1)
    s.add_request(req("r1", t=10.0))
    out = s.schedule(snap(10.0, busy("a1", A, inflight=3)))
    assert out.assign == (Assign("r1", "a1"),)


def test_a_full_batch_waiting_scales_out_with_the_whole_batch_on_the_new_instance() -> None:
    s = sched()
    s.add_request(req("r1", t=10.0, capacity=2, slo_ms=5000.0))
    out = s.schedule(snap(10.0, busy("a1", A, inflight=2, capacity=2)))
    assert out.start == () and out.assign == ()         # one request: wait for room (or its slack)
    s.add_request(req("r2", t=10.0, capacity=2, slo_ms=5000.0))
    out = s.schedule(snap(10.0, busy("a1", A, inflight=2, capacity=2)))
    assert out.start == (StartFor("r1", (), ("r2",)),)


def test_a_lone_request_behind_a_full_instance_scales_out_when_its_slack_runs_out() -> None:
    s = sched()
    s.add_request(req("r1", t=10.0, capacity=2, slo_ms=5000.0))
    full = busy("a1", A, inflight=2, capacity=2)
    assert s.schedule(snap(10.0, full)).start == ()
    deadline = s.next_deadline_s()
    assert deadline == pytest.approx(10.0 + 5.0 - 1.0 - 0.1)   # SLO − cold start − T(1)
    assert s.schedule(snap(deadline, full)).start == (StartFor("r1"),)


def test_a_new_instance_that_cannot_meet_the_slo_is_not_started_while_one_is_starting() -> None:
    s = sched()                                           # cold start 1000 ms > the 400 ms SLO
    s.add_request(req("r1", t=10.0))
    s.add_request(req("r2", t=10.0))
    starting = InstanceView("new", A, "STARTING", 10.0, inflight=1, capacity=8)
    out = s.schedule(snap(10.5, starting))
    assert out.start == () and s.next_deadline_s() == pytest.approx(40.0)   # only the queue bound
    out = s.schedule(snap(11.0, busy("new", A, inflight=1)))             # it is ready: they join it
    assert out.assign == (Assign("r1", "new"), Assign("r2", "new"))


def test_an_idle_instance_another_queued_request_will_use_is_not_evicted() -> None:
    s = sched()
    for i in range(3):
        s.add_request(req(f"a{i}", A, t=10.0 + i * 0.001))   # held: a bigger batch is coming
    s.add_request(req("b", B, t=10.002, capacity=1))
    out = s.schedule(snap(10.002, idle("a1", A), max_instances=1))
    assert out.start == () and out.assign == ()           # a1 is A's, about to be used
    assert s.waiting_keys() == frozenset({A, B})


def test_a_request_no_instance_can_ever_take_is_refused_at_once() -> None:
    s = sched()
    s.add_request(req("r1", capacity=1))
    out = s.schedule(snap(10.0, gpu=GpuView(free_mb=100.0, instance_mb=2000.0)))
    assert [r.reason for r in out.refuse] == ["InsufficientGpuMemory"]
    assert out.refuse[0].retry_after_s is not None and out.refuse[0].retry_after_s >= 1
    # with something running, room may come back: the request waits instead
    s.add_request(req("r2", capacity=1))
    out = s.schedule(snap(10.0, busy("b1", B), gpu=GpuView(free_mb=100.0, instance_mb=2000.0)))
    assert out.refuse == () and s.waiting_keys() == frozenset({A})


def test_a_full_queue_refuses_with_a_retry_after() -> None:
    s = sched(max_queue_per_function=2)
    for i in range(3):
        s.add_request(req(f"r{i}", capacity=1))
    out = s.schedule(snap(10.0, busy("a1", A, 1, 1), max_instances=1))
    assert [(r.request_id, r.reason) for r in out.refuse] == [("r2", "FunctionQueueFull")]
    assert out.refuse[0].retry_after_s is not None and 1 <= out.refuse[0].retry_after_s <= 30
    assert s.waiting_keys() == frozenset({A})


def test_a_request_waiting_past_the_queue_time_bound_is_refused() -> None:
    s = sched(max_queue_s=5.0)
    s.add_request(req("r1", t=10.0, capacity=1, slo_ms=60_000.0))
    full = busy("a1", A, 1, 1)
    assert s.schedule(snap(10.0, full, max_instances=1)).refuse == ()
    assert s.next_deadline_s() == pytest.approx(15.0)
    out = s.schedule(snap(15.0, full, max_instances=1))
    assert [r.reason for r in out.refuse] == ["QueueTimeLimitExceeded"] and s.waiting_keys() == frozenset()


def test_abort_drops_a_waiting_request() -> None:
    s = sched()
    s.add_request(req("r1", capacity=1))
    assert s.abort("r1") and not s.abort("r1")
    assert s.schedule(snap(10.0)).start == ()


def test_finished_requests_teach_the_model_and_cut_the_limit_on_slow_service() -> None:
    s = SloScheduler(SloConfig(max_running_batches=8, service_share=0.5), LatencyModel())
    for i in range(3):
        s.add_request(req(f"r{i}", B if i else A, capacity=1))
    s.schedule(snap(10.0))
    s.update([Finished("r0", "x", True, batch_size=1, prompt_tokens=100, ttft_ms=40.0, init_ms=700.0)])
    assert s.limit.limit == 8 and s.model.cold_start_ms(A) == pytest.approx(700.0)
    s.update([Finished("r1", "y", True, batch_size=1, prompt_tokens=100, ttft_ms=300.0)])   # > 0.5 × 400
    assert s.limit.limit == 4
    s.update([Finished("r2", "z", False, ttft_ms=300.0), Finished("unknown", "z", True, ttft_ms=1.0)])
    assert s.limit.limit == 4    # failures and unknown requests teach nothing
