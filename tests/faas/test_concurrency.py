"""Reserved concurrency and the unreserved pool (IO-free counting)."""
from __future__ import annotations

import threading

import pytest

from slfaas.errors import InvalidParameter, TooManyRequests
from slfaas.faas.concurrency import ACCOUNT_REASON, RESERVED_REASON, ConcurrencyTracker, min_unreserved


def test_reserved_limit_is_enforced_and_released() -> None:
    t = ConcurrencyTracker(32, {"fn": 2})
    a = t.acquire("fn")
    b = t.acquire("fn")
    assert t.in_flight("fn") == 2
    with pytest.raises(TooManyRequests) as exc:
        t.acquire("fn")
    assert exc.value.reason == RESERVED_REASON
    t.release("fn", b)
    t.acquire("fn")  # room again
    assert t.in_flight("fn") == 2
    t.release("fn", a)


def test_zero_reserved_throttles_everything() -> None:
    t = ConcurrencyTracker(32, {"fn": 0})
    with pytest.raises(TooManyRequests) as exc:
        with t.lease("fn"):
            pass
    assert exc.value.reason == RESERVED_REASON
    assert t.in_flight("fn") == 0


def test_unreserved_pool_is_what_reservations_leave() -> None:
    t = ConcurrencyTracker(10, {"big": 7})
    assert t.unreserved_limit() == 3
    leases = [t.acquire(f"f{i}") for i in range(3)]
    with pytest.raises(TooManyRequests) as exc:
        t.acquire("other")
    assert exc.value.reason == ACCOUNT_REASON
    # The reserved function does not use the shared pool.
    assert t.acquire("big") is False
    for i, from_pool in enumerate(leases):
        t.release(f"f{i}", from_pool)
    t.acquire("other")


def test_release_after_reservation_changed_returns_the_right_pool() -> None:
    t = ConcurrencyTracker(10)
    from_pool = t.acquire("fn")
    t.set_reserved("fn", 5)          # reserved while the invocation runs
    t.release("fn", from_pool)
    t.set_reserved("fn", None)
    leases = [t.acquire(f"g{i}") for i in range(10)]   # the whole pool is free again
    assert all(leases)


def test_check_reservation_keeps_the_minimum_unreserved() -> None:
    t = ConcurrencyTracker(32, {"a": 10})
    floor = min_unreserved(32)
    t.check_reservation("b", 32 - 10 - floor)
    with pytest.raises(InvalidParameter, match="UnreservedConcurrentExecution below its minimum"):
        t.check_reservation("b", 32 - 10 - floor + 1)
    t.check_reservation("a", 32 - floor)  # a's own reservation is replaced, not added


def test_lease_under_threads_never_exceeds_reserved() -> None:
    t = ConcurrencyTracker(100, {"fn": 3})
    peak = 0
    lock = threading.Lock()
    current = 0
    throttled = 0
    gate = threading.Barrier(12)

    def worker() -> None:
        nonlocal peak, current, throttled
        gate.wait()
        for _ in range(200):
            try:
                with t.lease("fn"):
                    with lock:
                        current += 1
                        peak = max(peak, current)
                    with lock:
                        current -= 1
            except TooManyRequests:
                with lock:
                    throttled += 1

    threads = [threading.Thread(target=worker) for _ in range(12)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert peak <= 3
    assert t.in_flight("fn") == 0
