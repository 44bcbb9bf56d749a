"""The preloader: every interval, estimate each function's arrival rate, ask the pure planner
(``policy/preload.py``) what to keep loaded, and apply the plan: how many runtimes to keep
pre-warmed per resident (base model, device), and which adapters the host tier holds."""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from slfaas.gpu_node import events as ev
from slfaas.gpu_node.policy.preload import (DeviceState, FunctionDemand, PreloadPlan, PreloadSnapshot, ResidentBackbone,
                                            estimate_rate_per_s, plan)
from slfaas.gpu_node.resources.adapters import AdapterTiers, adapter_bytes
from slfaas.gpu_node.sandboxes.pool_support import Flavour
from slfaas.gpu_node.sandboxes.pools import Pools
from slfaas.gpu_node.types import BackboneInfo, PreloadInfo

log = logging.getLogger(__name__)

ARRIVALS_KEPT = 256          # per function: enough for a rate estimate
FORGET_AFTER_S = 3600.0      # a function not invoked for this long drops out of the plan


@dataclass(frozen=True)
class PreloadConfig:
    interval_s: float = 1.0
    min_prewarmed_per_backbone: int = 1
    prewarm_budget_mb: int = 8192          # memory for pre-warmed runtimes, per device
    host_tier_budget_mb: int = 2048        # host adapter tier (the builder sizes the tier with it)
    runtime_saved_s: float = 5.0           # what one pre-warmed runtime saves a cold start (until measured)
    host_saved_s_per_gb: float = 0.5       # reading an adapter from disk vs the host tier
    rate_time_constant_s: float = 60.0
    prior_rate_per_s: float = 1 / 600       # a deployed function never invoked yet: worth a little

@dataclass
class _Seen:
    base_model: str
    code_dir: Path
    arrivals: deque
    since: float                           # deployed or first invoked here


class Preloader:
    def __init__(self, config: PreloadConfig, device: str, pools: Pools | None, tiers: AdapterTiers,
                 resident: Callable[[], list[BackboneInfo]], runtime_mb: Callable[[], float],
                 clock: Callable[[], float] = time.time):
        self.config = config
        self._device = device
        self._pools = pools
        self._tiers = tiers
        self._resident = resident
        self._runtime_mb = runtime_mb
        self._clock = clock
        self._lock = threading.Lock()
        self._seen: dict[str, _Seen] = {}
        self.last: PreloadInfo | None = None
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> "Preloader":
        self._thread = threading.Thread(target=self._loop, daemon=True, name="preloader")
        self._thread.start()
        return self

    def on_event(self, event: ev.NodeEvent) -> None:
        """The node's event bus: arrivals feed the rates; a new backbone gets its runtimes soon."""
        if isinstance(event, (ev.InvocationSubmitted, ev.FunctionPrepared)):
            key = f"{event.function_name}:{event.version}"
            with self._lock:
                seen = self._seen.get(key)
                if seen is None or seen.code_dir != Path(event.code_dir):
                    seen = self._seen[key] = _Seen(event.base_model, Path(event.code_dir),
                                                   deque(maxlen=ARRIVALS_KEPT), event.ts)
                if isinstance(event, ev.InvocationSubmitted):
                    seen.arrivals.append(event.ts)

    def rate_per_s(self, function_name: str, version: str) -> float:
        """A function version's arrivals per second, as the plan estimates them (0: not seen)."""
        with self._lock:
            seen = self._seen.get(f"{function_name}:{version}")
            arrivals = tuple(seen.arrivals) if seen is not None else ()
        return estimate_rate_per_s(arrivals, self._clock(), self.config.rate_time_constant_s) if arrivals else 0.0

    def snapshot(self) -> PreloadSnapshot:
        now = self._clock()
        cfg = self.config
        with self._lock:
            for key in [k for k, s in self._seen.items()
                        if now - (s.arrivals[-1] if s.arrivals else s.since) > FORGET_AFTER_S]:
                del self._seen[key]
            seen = {k: (s.base_model, s.code_dir, tuple(s.arrivals)) for k, s in self._seen.items()}
        functions = []
        for key, (base_model, code_dir, arrivals) in sorted(seen.items()):
            nbytes = adapter_bytes(code_dir)
            if nbytes <= 0:
                continue
            rate = max(cfg.prior_rate_per_s, estimate_rate_per_s(arrivals, now, cfg.rate_time_constant_s))
            functions.append(FunctionDemand(key, base_model, rate, nbytes, gpu_saved_s=0.0,
                                            host_saved_s=cfg.host_saved_s_per_gb * nbytes / 1e9))
        runtime_bytes = max(1, int(self._runtime_mb() * 2**20))
        backbones = tuple(ResidentBackbone(str(b.model_path), runtime_bytes, cfg.runtime_saved_s)
                          for b in self._resident())
        device = DeviceState(self._device, backbones, gpu_adapter_budget_bytes=0,
                             host_adapter_budget_bytes=self._tiers.host_budget_bytes,
                             prewarm_budget_bytes=cfg.prewarm_budget_mb << 20)
        return PreloadSnapshot(tuple(functions), (device,), cfg.min_prewarmed_per_backbone)

    def tick(self) -> PreloadPlan:
        decided = plan(self.snapshot())
        if self._pools is not None:
            for r in decided.runtimes:
                self._pools.set_prewarmed(Flavour(Path(r.base_model), r.device), r.count)
        with self._lock:
            code_dirs = {k: s.code_dir for k, s in self._seen.items()}
        self._tiers.place([code_dirs[a.function] for a in decided.adapters
                           if a.tier == "host" and a.function in code_dirs])
        self.last = PreloadInfo(self._clock(), tuple((r.base_model, r.device, r.count) for r in decided.runtimes),
                                tuple((a.function, a.device, a.tier) for a in decided.adapters),
                                self.config.prewarm_budget_mb << 20, self._tiers.host_budget_bytes,
                                decided.notes)
        return decided

    def _loop(self) -> None:
        while not self._closed.wait(self.config.interval_s):
            try:
                self.tick()
            except Exception:
                log.exception("preloading failed")

    def close(self) -> None:
        self._closed.set()
