"""FCFS scheduling over the placement policy: decisions for a round of requests, no node."""
from __future__ import annotations

from slfaas.gpu_node.policy.scheduling import Assign, FcfsScheduler, PendingRequest, RefuseRequest, StartFor
from slfaas.gpu_node.policy.view import InstanceView, NodeSnapshot

A, B = ("a", "r1"), ("b", "r1")


def test_one_round_places_requests_in_arrival_order_one_per_instance() -> None:
    s = NodeSnapshot(10.0, (InstanceView("a1", A, "IDLE", 1.0),), max_instances=2)
    sched = FcfsScheduler()
    for rid, key in (("r1", A), ("r2", A), ("r3", B)):
        sched.add_request(PendingRequest(rid, key, 0.0))
    out = sched.schedule(s)
    assert out.assign == (Assign("r1", "a1"),)       # the warm one, to the first arrival
    assert out.start == (StartFor("r2"),)            # the instance is taken: a second one
    assert [r.request_id for r in out.refuse] == ["r3"]   # the limit of 2 is reached
    assert isinstance(out.refuse[0], RefuseRequest) and out.refuse[0].reason == "ConcurrentInvocationLimitExceeded"
    assert sched.waiting_keys() == frozenset()       # FCFS never leaves a request waiting


def test_an_instance_evicted_in_a_round_is_not_evicted_twice() -> None:
    s = NodeSnapshot(10.0, (InstanceView("a1", A, "IDLE", 1.0), InstanceView("a2", A, "IDLE", 2.0)), max_instances=2)
    sched = FcfsScheduler()
    sched.add_request(PendingRequest("r1", B, 0.0))
    sched.add_request(PendingRequest("r2", ("c", "r1"), 0.0))
    out = sched.schedule(s)
    assert out.start == (StartFor("r1", ("a1",)), StartFor("r2", ("a2",)))


def test_abort_drops_a_waiting_request() -> None:
    sched = FcfsScheduler()
    sched.add_request(PendingRequest("r1", A, 0.0))
    assert sched.abort("r1") is True and sched.abort("r1") is False
    assert sched.schedule(NodeSnapshot(0.0, (), 4)).start == ()
