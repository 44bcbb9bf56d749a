"""Concurrency accounting: reserved concurrency per function and the unreserved pool.

IO-free (in-memory counts under one lock). Like AWS: a function with reserved concurrency N
never runs more than N invocations at once (N = 0 throttles every one) and its reservation is
taken out of the account's limit; functions without a reservation share what is left. The
account limit here is what this node can run at once (its instance limit), not a quota.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator, Mapping

from slfaas.errors import InvalidParameter, TooManyRequests

RESERVED_REASON = "ReservedFunctionConcurrentInvocationLimitExceeded"
ACCOUNT_REASON = "ConcurrentInvocationLimitExceeded"


def min_unreserved(account_limit: int) -> int:
    """What reservations must leave to the functions without one (AWS keeps 100 of 1,000)."""
    return max(1, account_limit // 10)


class ConcurrencyTracker:
    def __init__(self, account_limit: int, reserved: Mapping[str, int] | None = None):
        if account_limit < 1:
            raise ValueError("account_limit must be at least 1")
        self.account_limit = account_limit
        self._lock = threading.Lock()
        self._reserved: dict[str, int] = dict(reserved or {})
        self._in_flight: dict[str, int] = {}
        self._unreserved_in_flight = 0

    # reservations
    def reserved(self, function_name: str) -> int | None:
        with self._lock:
            return self._reserved.get(function_name)

    def total_reserved(self) -> int:
        with self._lock:
            return sum(self._reserved.values())

    def unreserved_limit(self) -> int:
        with self._lock:
            return self.account_limit - sum(self._reserved.values())

    def check_reservation(self, function_name: str, reserved: int) -> None:
        """Raise unless reserving ``reserved`` for the function leaves the unreserved minimum."""
        floor = min_unreserved(self.account_limit)
        with self._lock:
            others = sum(v for k, v in self._reserved.items() if k != function_name)
        if self.account_limit - others - reserved < floor:
            raise InvalidParameter(
                f"Specified ReservedConcurrentExecutions for function decreases account's "
                f"UnreservedConcurrentExecution below its minimum value of [{floor}].")

    def set_reserved(self, function_name: str, reserved: int | None) -> None:
        with self._lock:
            if reserved is None:
                self._reserved.pop(function_name, None)
            else:
                self._reserved[function_name] = reserved

    # leases
    def in_flight(self, function_name: str | None = None) -> int:
        with self._lock:
            if function_name is None:
                return sum(self._in_flight.values())
            return self._in_flight.get(function_name, 0)

    def acquire(self, function_name: str) -> bool:
        """Count one invocation in, or raise TooManyRequests. Returns whether it came out of
        the unreserved pool (give that back to ``release``: a reservation may change meanwhile)."""
        with self._lock:
            current = self._in_flight.get(function_name, 0)
            reserved = self._reserved.get(function_name)
            if reserved is not None:
                if current >= reserved:
                    raise TooManyRequests(
                        f"Rate Exceeded. {function_name} is at its reserved concurrency ({reserved}).",
                        reason=RESERVED_REASON)
            else:
                pool = self.account_limit - sum(self._reserved.values())
                if self._unreserved_in_flight >= pool:
                    raise TooManyRequests(
                        f"Rate Exceeded. The {pool} unreserved concurrent executions are all in use.",
                        reason=ACCOUNT_REASON)
                self._unreserved_in_flight += 1
            self._in_flight[function_name] = current + 1
            return reserved is None

    def release(self, function_name: str, from_pool: bool) -> None:
        with self._lock:
            current = self._in_flight.get(function_name, 0)
            if current <= 1:
                self._in_flight.pop(function_name, None)
            else:
                self._in_flight[function_name] = current - 1
            if from_pool and self._unreserved_in_flight > 0:
                self._unreserved_in_flight -= 1

    @contextmanager
    def lease(self, function_name: str) -> Iterator[None]:
        from_pool = self.acquire(function_name)
        try:
            yield
        finally:
            self.release(function_name, from_pool)
