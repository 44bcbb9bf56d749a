"""The snapshot of a node that policies decide on: plain frozen values."""
from __future__ import annotations

from dataclasses import dataclass

PoolKey = tuple[str, str]   # (function name, revision id): instances of one key are interchangeable


@dataclass(frozen=True)
class InstanceView:
    instance_id: str
    pool_key: PoolKey
    state: str               # an InstanceState value: STARTING, IDLE, BUSY, ...
    last_used_s: float       # clock value of its last release (or start)
    inflight: int = 0        # requests assigned to it and not finished
    capacity: int = 1        # requests it may hold at once
    stale: bool = False      # of a retired revision: finishes what it has, never gets more
    gpu_mb: float | None = None   # its measured device memory (None: not measured)
    rate_per_s: float = 0.0  # arrivals of its function (the preloader's estimate)
    reload_s: float = 0.0    # what starting it again would cost (its init)
    provisioned: bool = False  # held for provisioned concurrency: no keep-alive expiry, never evicted

    @property
    def alive(self) -> bool:
        return self.state in ("STARTING", "IDLE", "BUSY")

    @property
    def has_room(self) -> bool:
        return self.state in ("IDLE", "BUSY") and not self.stale and self.inflight < self.capacity


@dataclass(frozen=True)
class GpuView:
    free_mb: float           # free device memory now
    instance_mb: float       # what one more instance is expected to need (measured, bounded)


@dataclass(frozen=True)
class NodeSnapshot:
    now_s: float
    instances: tuple[InstanceView, ...]
    max_instances: int
    gpu: GpuView | None = None                  # None: no device-memory admission (CPU)
    waiting_keys: frozenset[PoolKey] = frozenset()   # keys with requests queued for them
