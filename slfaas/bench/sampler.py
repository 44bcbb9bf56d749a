"""A timeline of the node during a run: ``GET /slfaas/v1/node`` sampled every interval by a
background thread (instances by state, device memory in use, what the instances hold)."""
from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any, Callable, Mapping

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NodeSample:
    ts: float                          # unix time of the sample
    instances: int                     # alive (starting, idle or busy)
    busy: int
    starting: int
    device_used_mb: float | None       # the whole device's used memory (None: CPU)
    device_total_mb: float | None
    instances_device_mb: float | None  # what the instances hold, as measured (None: not measured)
    pooled: int = 0                    # warm-pool / pre-warmed runtimes held

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_node(cls, ts: float, node: Mapping[str, Any]) -> "NodeSample":
        """One sample from the node's description (the API's ``/slfaas/v1/node`` body)."""
        alive = [i for i in node.get("Instances", []) if i.get("state") in ("STARTING", "IDLE", "BUSY")]
        states = Counter(i["state"] for i in alive)
        gpu = node.get("Gpu") or None
        held = [float(i["gpu_mb"]) for i in alive if i.get("gpu_mb") is not None]
        if gpu and gpu.get("instances"):
            held = [float(mb) for mb in gpu["instances"].values()]
        return cls(ts, len(alive), states.get("BUSY", 0), states.get("STARTING", 0),
                   float(gpu["used_mb"]) if gpu else None, float(gpu["total_mb"]) if gpu else None,
                   sum(held) if held else None, sum(int(p.get("held", 0)) for p in node.get("Pools", [])))


class NodeSampler:
    """``with NodeSampler(endpoint, 0.5) as s: ...`` then ``s.samples``: one sample per interval
    while the block runs (a failed read is skipped, logged once)."""

    def __init__(self, endpoint: str, interval_s: float = 0.5,
                 read: Callable[[], Mapping[str, Any]] | None = None):
        if not interval_s > 0:
            raise ValueError(f"the sampling interval must be > 0 s, got {interval_s}")
        self.interval_s = interval_s
        self._read = read or (lambda: _read_node(endpoint))
        self.samples: list[NodeSample] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._warned = False

    def sample(self) -> None:
        try:
            node = self._read()
        except Exception as exc:  # the run goes on: a gap in the timeline, not a failed benchmark
            if not self._warned:
                log.warning("node sample failed: %s", exc)
                self._warned = True
            return
        self.samples.append(NodeSample.from_node(time.time(), node))

    def _loop(self) -> None:
        while not self._stop.is_set():
            t0 = time.monotonic()
            self.sample()
            self._stop.wait(max(0.0, self.interval_s - (time.monotonic() - t0)))

    def __enter__(self) -> "NodeSampler":
        self._thread = threading.Thread(target=self._loop, daemon=True, name="node-sampler")
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sample()   # the state at the end


def _read_node(endpoint: str) -> Mapping[str, Any]:
    from slfaas.client import api

    return api(endpoint, "GET", "/slfaas/v1/node", timeout_s=10)
