"""Processor-sharing accounting of one device's wall time (IO-free; the caller passes clocks).

Every moment of a node's elapsed time goes to exactly one place: split evenly among the
activities running then (a batch's compute, a cold start's init, a warm-pool pre-start), or,
when none runs, to the instances held idle (split evenly among them: a provisioned one's share
is its function's provisioned time, billed to it; any other's is keep-alive overhead of its
function), or else to one overhead category — pre-loading (warm-pool runtimes held), idle
backbone (resident, unused), or node idle. Apart from that split, each instance held idle
for keep-alive also counts its whole idle time (instance-seconds: what keep-alive holds of
the device's memory, whatever else runs). Concurrent work on one GPU time-slices it, hence the even split: a request that
overlaps another for 1 s accrues 0.5 s, and the sum of accruals never exceeds the wall time.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Mapping

ACTIVITY_KINDS = ("compute", "init", "preload")


@dataclass(frozen=True)
class TimelineTotals:
    start_ts: float
    now_ts: float
    accrued_s: Mapping[str, float]          # activity kind → seconds (finished and running)
    overhead_s: Mapping[str, float]         # keep_alive | preload | idle_backbone | node_idle
    keep_alive_by_function_s: Mapping[str, float]
    provisioned_by_function_s: Mapping[str, float]   # held idle for provisioned concurrency: billed
    idle_instance_by_function_s: Mapping[str, float]  # instance-seconds held idle by keep-alive

    @property
    def elapsed_s(self) -> float:
        return self.now_ts - self.start_ts


class DeviceTimeline:
    """Thread-safe; every method takes the time of the event (``ts``, seconds). Events must
    come in non-decreasing time order; an earlier ``ts`` is treated as ``now``."""

    def __init__(self, start_ts: float):
        self._lock = threading.Lock()
        self._start_ts = start_ts
        self._now_ts = start_ts
        self._active: dict[str, tuple[str, float]] = {}   # key → (kind, accrued_s)
        self._accrued = {k: 0.0 for k in ACTIVITY_KINDS}
        self._overhead = {"keep_alive": 0.0, "preload": 0.0, "idle_backbone": 0.0, "node_idle": 0.0}
        self._keep_alive_fn: dict[str, float] = {}
        self._provisioned_fn: dict[str, float] = {}
        self._idle_instance_fn: dict[str, float] = {}
        self._idle_instances: dict[str, tuple[str, bool]] = {}   # instance id → (function, provisioned)
        self._pool = 0
        self._backbones = 0

    def _advance(self, ts: float) -> None:
        """Caller holds the lock: hand out [now, ts)."""
        dt = ts - self._now_ts
        if dt <= 0:
            return
        self._now_ts = ts
        for fn, provisioned in self._idle_instances.values():
            if not provisioned:
                self._idle_instance_fn[fn] = self._idle_instance_fn.get(fn, 0.0) + dt
        if self._active:
            share = dt / len(self._active)
            for key, (kind, acc) in self._active.items():
                self._active[key] = (kind, acc + share)
                self._accrued[kind] += share
        elif self._idle_instances:
            share = dt / len(self._idle_instances)
            for fn, provisioned in self._idle_instances.values():
                to = self._provisioned_fn if provisioned else self._keep_alive_fn
                to[fn] = to.get(fn, 0.0) + share
                if not provisioned:
                    self._overhead["keep_alive"] += share
        elif self._pool > 0:
            self._overhead["preload"] += dt
        elif self._backbones > 0:
            self._overhead["idle_backbone"] += dt
        else:
            self._overhead["node_idle"] += dt

    def advance(self, ts: float) -> None:
        with self._lock:
            self._advance(ts)

    def start_activity(self, key: str, kind: str, ts: float) -> None:
        if kind not in ACTIVITY_KINDS:
            raise ValueError(f"unknown activity kind {kind!r}")
        with self._lock:
            self._advance(ts)
            if key in self._active:
                raise ValueError(f"activity {key!r} is already running")
            self._active[key] = (kind, 0.0)

    def end_activity(self, key: str, ts: float) -> float:
        """Stop an activity; returns the wall seconds it accrued (its share of the device)."""
        with self._lock:
            self._advance(ts)
            _kind, acc = self._active.pop(key)
            return acc

    def end_activity_if_active(self, key: str, ts: float) -> float | None:
        """``end_activity`` for an activity that another thread may have ended already
        (an instance's init: its invocation and its watcher both end it)."""
        with self._lock:
            self._advance(ts)
            item = self._active.pop(key, None)
            return None if item is None else item[1]

    def accrued(self, key: str, ts: float) -> float | None:
        """What a running activity accrued up to ``ts``; None if it is not running."""
        with self._lock:
            self._advance(ts)
            item = self._active.get(key)
            return None if item is None else item[1]

    def is_active(self, key: str) -> bool:
        with self._lock:
            return key in self._active

    def instance_idle(self, instance_id: str, function_name: str, ts: float, provisioned: bool = False) -> None:
        """Held idle from ``ts`` (again, when its ``provisioned`` flag changed)."""
        with self._lock:
            self._advance(ts)
            self._idle_instances[instance_id] = (function_name, provisioned)

    def instance_busy(self, instance_id: str, ts: float) -> None:
        """Busy or gone: no longer held idle."""
        with self._lock:
            self._advance(ts)
            self._idle_instances.pop(instance_id, None)

    def set_pool_size(self, n: int, ts: float) -> None:
        with self._lock:
            self._advance(ts)
            self._pool = max(0, n)

    def set_backbones(self, n: int, ts: float) -> None:
        with self._lock:
            self._advance(ts)
            self._backbones = max(0, n)

    def totals(self, ts: float) -> TimelineTotals:
        with self._lock:
            self._advance(ts)
            return TimelineTotals(self._start_ts, self._now_ts, dict(self._accrued), dict(self._overhead),
                                  dict(self._keep_alive_fn), dict(self._provisioned_fn),
                                  dict(self._idle_instance_fn))
