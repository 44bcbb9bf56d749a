"""Adapter tiers: where a node keeps the LoRA adapters a cold start copies into its runtime.

The disk tier is the code store (each function's extracted zip). The host tier holds chosen
adapters' weights in memory, one sealed memfd per adapter: an instance receives a read-only
descriptor of just its own adapter (never a view of a tier that holds other tenants'), and its
runtime copies from there into its LoRA slots. The preloader decides what the host tier holds
(``place``); LRU by last use decides what leaves first when the budget is short, and what a
running instance was handed stays valid after eviction (its descriptor keeps the pages).

A GPU tier (node-owned device memory per adapter) is not built: the plan's GPU budget is 0.
"""
from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from collections import OrderedDict
from pathlib import Path

from slfaas.gpu_node.types import TierInfo

log = logging.getLogger(__name__)

ADAPTER_WEIGHTS = "adapter_model.safetensors"


def adapter_bytes(code_dir: Path) -> int:
    try:
        return (Path(code_dir) / ADAPTER_WEIGHTS).stat().st_size
    except OSError:
        return 0


def _sealed_copy(path: Path) -> int:
    fd = os.memfd_create(f"slfaas-adapter-{path.parent.name[:16]}", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        with open(path, "rb") as src:
            while chunk := src.read(8 << 20):
                os.write(fd, chunk)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_WRITE | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK
                    | fcntl.F_SEAL_SEAL)
    except BaseException:
        os.close(fd)
        raise
    return fd


class AdapterTiers:
    def __init__(self, host_budget_bytes: int):
        self.host_budget_bytes = host_budget_bytes
        self._lock = threading.Lock()
        self._host: OrderedDict[Path, tuple[int, int, float]] = OrderedDict()   # code dir → (fd, bytes, last use)
        self._hits = 0
        self._misses = 0

    def handout(self, code_dir: Path) -> int | None:
        """A read-only descriptor of ``code_dir``'s adapter weights from the host tier (the
        caller closes it), or None: the runtime reads them from its code (the disk tier)."""
        key = Path(code_dir)
        with self._lock:
            entry = self._host.get(key)
            if entry is None:
                self._misses += 1
                return None
            self._hits += 1
            fd, nbytes, _ = entry
            self._host[key] = (fd, nbytes, time.monotonic())
            self._host.move_to_end(key)
            return os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)

    def place(self, wanted: list[Path]) -> None:
        """Hold exactly ``wanted`` (in priority order) in the host tier, as far as the budget
        goes: load what is missing, release what is not wanted any more."""
        wanted = [Path(w) for w in wanted]
        with self._lock:
            for key in [k for k in self._host if k not in wanted]:
                os.close(self._host.pop(key)[0])
            used = sum(b for _, b, _ in self._host.values())
        for key in wanted:
            with self._lock:
                if key in self._host:
                    continue
            size = adapter_bytes(key)
            if size == 0 or used + size > self.host_budget_bytes:
                continue
            try:
                fd = _sealed_copy(key / ADAPTER_WEIGHTS)
            except OSError as exc:   # the function was deleted meanwhile: nothing to hold
                log.debug("host tier: cannot load %s: %s", key, exc)
                continue
            with self._lock:
                self._host[key] = (fd, size, time.monotonic())
            used += size

    def info(self) -> TierInfo:
        with self._lock:
            return TierInfo("host", self.host_budget_bytes, sum(b for _, b, _ in self._host.values()),
                            tuple(k.name for k in self._host), self._hits, self._misses)

    def close(self) -> None:
        with self._lock:
            for fd, _, _ in self._host.values():
                os.close(fd)
            self._host.clear()
