"""The node's memory ledger: what an instance costs in device memory, measured, not guessed.

Admission asks it what one more instance will need. Each instance's device memory is measured
once it has served its first invocation (its context, adapter and KV cache as they were then);
the estimate is the largest recent measurement, and ``upper_bound_mb`` (``--instance-gpu-mb``)
both caps it and stands in while nothing was measured (or NVML cannot be read). On a node
without backbone sharing (a baseline) every instance holds a whole backbone as well: the
largest one is added to that bound.
"""
from __future__ import annotations

import threading
from collections import deque
from typing import Callable

from slfaas.gpu_node.policy.view import GpuView

RECENT = 32


class MemoryLedger:
    def __init__(self, upper_bound_mb: float, free_mb: Callable[[], float] | None = None,
                 measure: Callable[[dict[int, str]], dict[str, float] | None] | None = None):
        """``free_mb``: the device's free memory now (None: no device-memory admission, e.g. CPU);
        ``measure``: pid → instance id in, instance id → MB out (None: cannot measure)."""
        self.upper_bound_mb = float(upper_bound_mb)
        self._free_mb = free_mb
        self._measure = measure
        self._lock = threading.Lock()
        self._by_instance: dict[str, float] = {}
        self._recent: deque[float] = deque(maxlen=RECENT)
        self._private_backbone_mb = 0.0

    def add_private_backbone(self, size_bytes: int) -> None:
        """Instances hold their own copy of a backbone this large (a node without sharing)."""
        with self._lock:
            self._private_backbone_mb = max(self._private_backbone_mb, size_bytes / 2**20)

    @property
    def bound_mb(self) -> float:
        """What one instance may need at most: ``upper_bound_mb`` plus a private backbone."""
        with self._lock:
            return self.upper_bound_mb + self._private_backbone_mb

    @property
    def tracks_device(self) -> bool:
        """True where device memory is admitted (a GPU), so an instance holds some of it."""
        return self._free_mb is not None

    def observe(self, instance_id: str, pid: int | None) -> float | None:
        """Measure one instance now (after its first invocation); returns its MB if measured."""
        if self._measure is None or pid is None:
            return None
        got = self._measure({pid: instance_id})
        mb = (got or {}).get(instance_id)
        if mb is None:
            return None
        self.record(instance_id, mb)
        return mb

    def record(self, instance_id: str, mb: float) -> None:
        with self._lock:
            self._by_instance[instance_id] = mb
            self._recent.append(mb)

    def forget(self, instance_id: str) -> None:
        with self._lock:
            self._by_instance.pop(instance_id, None)

    def measured(self, instance_id: str) -> float | None:
        with self._lock:
            return self._by_instance.get(instance_id)

    def instance_estimate_mb(self) -> float:
        bound = self.bound_mb
        with self._lock:
            seen = max(self._recent, default=None)
        return bound if seen is None else min(seen, bound)

    def gpu_view(self) -> GpuView | None:
        if self._free_mb is None:
            return None
        return GpuView(free_mb=self._free_mb(), instance_mb=self.instance_estimate_mb())
