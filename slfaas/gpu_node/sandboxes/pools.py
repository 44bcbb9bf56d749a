"""A node's warm pools: generic runtimes (imports only, any function) and, per (base model,
device), runtimes pre-warmed for that backbone. A cold start takes a pre-warmed runtime of its
backbone first, then a generic one; the preloader sizes the pre-warmed pools while they run."""
from __future__ import annotations

import threading
from typing import Callable, Sequence

from slfaas.gpu_node.sandboxes.base import LogSink, Sandbox, SandboxSpec
from slfaas.gpu_node.sandboxes.pool_support import Flavour
from slfaas.gpu_node.sandboxes.warm_pool import WarmPool
from slfaas.gpu_node.types import PoolInfo


class Pools:
    def __init__(self, generic: WarmPool | None, make_prewarmed: Callable[[Flavour, int], WarmPool] | None = None):
        self._generic = generic
        self._make_prewarmed = make_prewarmed
        self._lock = threading.Lock()
        self._prewarmed: dict[Flavour, WarmPool] = {}

    @property
    def size(self) -> int:
        """The generic pool's target (``--warm-pool``)."""
        return self._generic.size if self._generic is not None else 0

    def take(self, spec: SandboxSpec, log_sink: LogSink) -> Sandbox | None:
        with self._lock:
            pools = [p for p in self._prewarmed.values() if p.serves(spec)]
        for pool in pools + ([self._generic] if self._generic is not None else []):
            got = pool.take(spec, log_sink)
            if got is not None:
                assert isinstance(got, Sandbox)
                return got
        return None

    def held(self) -> int:
        with self._lock:
            pools = list(self._prewarmed.values())
        return sum(p.held() for p in pools) + (self._generic.held() if self._generic is not None else 0)

    def resize(self, size: int) -> None:
        if self._generic is None:
            if size == 0:
                return
            raise ValueError("this node has no generic warm pool to resize (start it with --warm-pool N)")
        self._generic.resize(size)

    def set_prewarmed(self, flavour: Flavour, count: int) -> None:
        """Keep ``count`` runtimes pre-warmed for ``flavour``'s backbone (0 releases them)."""
        with self._lock:
            pool = self._prewarmed.get(flavour)
            if pool is None:
                if count <= 0 or self._make_prewarmed is None:
                    return
                self._prewarmed[flavour] = self._make_prewarmed(flavour, count)
                return
        if pool.size != count:
            pool.resize(count)

    def prewarmed_target(self, flavour: Flavour) -> int:
        with self._lock:
            pool = self._prewarmed.get(flavour)
        return pool.size if pool is not None else 0

    def describe(self) -> tuple[PoolInfo, ...]:
        with self._lock:
            prewarmed = sorted(self._prewarmed.items(), key=lambda kv: (str(kv[0].base_model), kv[0].device))
        out = []
        if self._generic is not None:
            out.append(PoolInfo("warm-pool", self._generic.launcher.kind, None, None, self._generic.size,
                                self._generic.held(), self._generic.ready_count()))
        for flavour, pool in prewarmed:
            out.append(PoolInfo("prewarmed", pool.launcher.kind, str(flavour.base_model), flavour.device, pool.size,
                                pool.held(), pool.ready_count()))
        return tuple(out)

    def close(self) -> Sequence[object]:
        with self._lock:
            pools = list(self._prewarmed.values())
            self._prewarmed.clear()
        left: list[object] = []
        for pool in pools + ([self._generic] if self._generic is not None else []):
            left += pool.close()
        self._generic = None
        return left
