"""What the SLO scheduler arbitrates between functions with: an adaptive bound on the batches
running at once on a device, and a fairness counter per function.

``ConcurrencyLimit`` is AIMD, as TCP's congestion window: every request whose service time
to first token stayed within its share of the SLO adds 1/limit (one more batch per limit's
worth of good completions); a request over it halves the limit, once per dispatch
generation (a violation by a request dispatched before the last cut says nothing new).

``VirtualTokenCounter`` is S-LoRA's virtual token counter: each function's counter grows with
the tokens dispatched for it; a function that was idle starts again at the smallest counter
among those waiting (idle time earns no credit), so between functions whose requests are
equally urgent the one served least goes first, and one far ahead of the least served yields.
"""
from __future__ import annotations

from typing import Iterable

from slfaas.gpu_node.policy.view import PoolKey


class ConcurrencyLimit:
    def __init__(self, low: int, high: int):
        if not 1 <= low <= high:
            raise ValueError(f"running batches: need 1 <= low <= high, got {low}, {high}")
        self.low, self.high = low, high
        self.value = float(high)      # start open: a quiet node has nothing to protect
        self._seq = 0                 # dispatches so far
        self._cut_at = 0              # the dispatch count when the limit was last cut

    @property
    def limit(self) -> int:
        return max(self.low, min(self.high, int(self.value)))

    def dispatched(self) -> int:
        """Number a dispatch; pass it back to ``observe`` with the request's outcome."""
        self._seq += 1
        return self._seq

    def observe(self, seq: int, congested: bool) -> None:
        if congested:
            if seq > self._cut_at:
                self.value = max(float(self.low), self.value / 2)
                self._cut_at = self._seq
        else:
            self.value = min(float(self.high), self.value + 1.0 / max(self.value, 1.0))


class VirtualTokenCounter:
    def __init__(self) -> None:
        self._counters: dict[PoolKey, float] = {}

    def counter(self, key: PoolKey) -> float:
        return self._counters.get(key, 0.0)

    def activate(self, key: PoolKey, backlogged: Iterable[PoolKey]) -> None:
        """``key`` got a request while it had none waiting: lift it to the least counter of
        the others waiting, so its idle time is no credit."""
        others = [self.counter(k) for k in backlogged if k != key]
        if others:
            self._counters[key] = max(self.counter(key), min(others))

    def charge(self, key: PoolKey, tokens: float) -> None:
        self._counters[key] = self.counter(key) + max(0.0, tokens)

    def lead(self, key: PoolKey, backlogged: Iterable[PoolKey]) -> float:
        """How far ``key`` is ahead of the least served function waiting."""
        counters = [self.counter(k) for k in backlogged]
        return self.counter(key) - min(counters) if counters else 0.0
