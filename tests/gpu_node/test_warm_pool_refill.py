"""When a warm pool replaces the runtimes taken from it (``refill_deferred``): not while cold
starts are still being taken (a refill's context creation and warm-up would compete with their
first forwards), but never later than the longest deferral, and at once when nothing waits."""
from __future__ import annotations

from slfaas.gpu_node.sandboxes.warm_pool import refill_deferred

QUIET_S, MAX_DEFER_S = 5.0, 10.0


def deferred(now: float, last_take: float, defer_since: float | None) -> bool:
    return refill_deferred(now, last_take, defer_since, QUIET_S, MAX_DEFER_S)


def test_nothing_taken_refills_at_once() -> None:
    assert not deferred(100.0, 0.0, None)


def test_a_burst_that_empties_the_pool_is_not_refilled_until_takes_are_quiet() -> None:
    # 16 runtimes taken between t=100 and t=100.5: the pool is empty, yet its refill waits
    assert deferred(101.0, 100.5, 100.0)
    assert deferred(105.4, 100.5, 100.0)
    assert not deferred(105.6, 100.5, 100.0)


def test_a_steady_stream_of_takes_cannot_defer_the_refill_for_ever() -> None:
    # a take every second since t=100: never quiet, but the first one is 10 s old at t=110
    assert deferred(109.5, 109.0, 100.0)
    assert not deferred(110.0, 110.0, 100.0)
