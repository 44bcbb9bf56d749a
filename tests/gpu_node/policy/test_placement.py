"""Placement and keep-alive as pure functions of a snapshot: no threads, no sleeps, no node."""
from __future__ import annotations

from slfaas.gpu_node.policy.keepalive import expired
from slfaas.gpu_node.policy.placement import Refuse, Reuse, Start, place
from slfaas.gpu_node.policy.view import GpuView, InstanceView, NodeSnapshot

A, B, C = ("a", "r1"), ("b", "r1"), ("c", "r1")


def inst(iid: str, key: tuple[str, str], state: str = "IDLE", last_used_s: float = 0.0, inflight: int = 0,
         stale: bool = False) -> InstanceView:
    return InstanceView(iid, key, state, last_used_s, inflight, 1, stale)


def snap(*instances: InstanceView, max_instances: int = 8, gpu: GpuView | None = None, now_s: float = 100.0,
         waiting: frozenset = frozenset()) -> NodeSnapshot:
    return NodeSnapshot(now_s, tuple(instances), max_instances, gpu, waiting)


def test_a_warm_instance_of_the_function_is_reused() -> None:
    s = snap(inst("a1", A), inst("b1", B))
    assert place(s, A) == Reuse("a1")
    assert place(s, B) == Reuse("b1")


def test_the_most_recently_used_warm_instance_is_preferred() -> None:
    s = snap(inst("old", A, last_used_s=1.0), inst("new", A, last_used_s=9.0), inst("busy", A, "BUSY", 10.0, 1))
    assert place(s, A) == Reuse("new")


def test_busy_starting_and_dying_instances_are_not_reused() -> None:
    for state in ("BUSY", "STARTING", "STOPPING", "FAILED", "STOPPED"):
        s = snap(inst("a1", A, state, inflight=1 if state == "BUSY" else 0))
        assert place(s, A) == Start(), state


def test_a_retired_revision_is_never_reused_and_goes_first() -> None:
    s = snap(inst("stale", A, stale=True, last_used_s=50.0), inst("b1", B, last_used_s=1.0), max_instances=2)
    assert place(s, A) == Start(evict=("stale",))   # not reused; and evicted before an older live one


def test_lru_idle_instance_of_another_function_is_evicted_at_the_limit() -> None:
    s = snap(inst("a1", A, last_used_s=5.0), inst("b1", B, last_used_s=1.0), inst("c1", C, "BUSY", 9.0, 1),
             max_instances=3)
    assert place(s, ("d", "r1")) == Start(evict=("b1",))


def test_at_the_limit_with_every_instance_busy_is_refused() -> None:
    s = snap(inst("a1", A, "BUSY", inflight=1), inst("b1", B, "STARTING"), max_instances=2)
    decision = place(s, C)
    assert isinstance(decision, Refuse) and decision.reason == "ConcurrentInvocationLimitExceeded"
    assert "limit of 2 instances" in decision.message


def test_no_eviction_of_an_instance_a_queued_request_is_about_to_use() -> None:
    s = snap(inst("a1", A, last_used_s=1.0), inst("b1", B, last_used_s=5.0), max_instances=2,
             waiting=frozenset({A}))
    assert place(s, C) == Start(evict=("b1",))   # a1 is older, but a request for A waits for it
    s = snap(inst("a1", A), max_instances=1, waiting=frozenset({A}))
    assert isinstance(place(s, C), Refuse)


def test_gpu_admission_starts_when_memory_fits() -> None:
    s = snap(inst("a1", A, "BUSY", inflight=1), gpu=GpuView(free_mb=4000, instance_mb=1500))
    assert place(s, B) == Start()


def test_gpu_admission_counts_instances_still_starting() -> None:
    gpu = GpuView(free_mb=4000, instance_mb=1500)
    starting = snap(inst("s1", A, "STARTING"), inst("s2", B, "STARTING"), gpu=gpu)
    decision = place(starting, C)   # 4000 - 2 × 1500 < 1500
    assert isinstance(decision, Refuse) and decision.reason == "InsufficientGpuMemory"
    assert "2 instance(s) starting" in decision.message


def test_gpu_admission_evicts_lru_idle_to_make_room() -> None:
    gpu = GpuView(free_mb=1000, instance_mb=1500)
    s = snap(inst("a1", A, last_used_s=3.0), inst("b1", B, last_used_s=2.0), gpu=gpu)
    assert place(s, C) == Start(evict=("b1",))


def test_gpu_admission_refuses_when_nothing_idle_can_make_room() -> None:
    s = snap(inst("a1", A, "BUSY", inflight=1), gpu=GpuView(free_mb=1000, instance_mb=1500))
    decision = place(s, B)
    assert isinstance(decision, Refuse) and decision.reason == "InsufficientGpuMemory"


def test_keep_alive_expires_only_idle_instances_past_the_ttl() -> None:
    s = snap(inst("fresh", A, last_used_s=95.0), inst("old", B, last_used_s=80.0),
             inst("older", C, last_used_s=70.0), inst("busy", A, "BUSY", 10.0, 1),
             inst("starting", B, "STARTING", 0.0), now_s=100.0)
    assert expired(s, keep_alive_s=10.0) == ("older", "old")   # oldest first
    assert expired(s, keep_alive_s=25.0) == ("older",)
    assert expired(s, keep_alive_s=1000.0) == ()


def test_keep_alive_boundary_is_strictly_greater() -> None:
    assert expired(snap(inst("a1", A, last_used_s=90.0), now_s=100.0), keep_alive_s=10.0) == ()
    assert expired(snap(inst("a1", A, last_used_s=89.99), now_s=100.0), keep_alive_s=10.0) == ("a1",)


def test_provisioned_idle_instances_are_never_evicted() -> None:
    from slfaas.gpu_node.policy.placement import start_one
    from slfaas.gpu_node.policy.view import InstanceView

    held = InstanceView("held", B, "IDLE", 1.0, provisioned=True)
    s = snap(held, inst("idle-c", C, last_used_s=50.0), max_instances=2)
    assert place(s, A) == Start(("idle-c",))                   # the provisioned one is older, yet kept
    full = snap(held, inst("busy-c", C, "BUSY", 1.0, 1), max_instances=2)
    refused = place(full, A)
    assert isinstance(refused, Refuse) and "provisioned" in refused.message
    assert isinstance(start_one(s, A, may_evict=False), Refuse)   # a pre-warm never evicts
    assert start_one(snap(held, max_instances=2), A, may_evict=False) == Start(())
