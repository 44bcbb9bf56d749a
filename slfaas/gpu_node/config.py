"""A node's settings (frozen): what the server's flags say about the node."""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from slfaas.gpu_node.policy.keepalive import FixedKeepAlive, HistogramKeepAlive, KeepAlivePolicy


SCHEDULERS = ("fcfs", "slo")


@dataclass(frozen=True)
class NodeConfig:
    data_dir: Path
    keep_alive_s: float = 300.0         # the fixed TTL, or the histogram policy's fallback TTL
    keep_alive_policy: str = "fixed"    # "fixed" or "histogram" (hybrid histogram); a function may set its own
    keep_alive_bin_s: float = 1.0       # histogram bin width (LLM functions idle for seconds)
    keep_alive_range_s: float = 600.0   # idle times beyond it are the histogram's out-of-bounds
    max_instances: int = 32
    init_timeout_s: float = 300.0
    device: str = "cpu"
    python: str = sys.executable
    verify_interval_s: float = 0.0      # backbone integrity checks; 0 = only on demand
    instance_gpu_mb: int = 1536         # upper bound of an instance's GPU memory (context, adapter, KV)
    # "shared" (slfaas), or a baseline without sharing: "private-checkpoint" (each instance loads
    # its own from the checkpoint), "private-host-cache" (each copies the node's host image)
    backbone: str = "shared"
    # scheduling: "fcfs" (place or refuse at once) or "slo" (queues, SLO-aware batches; the server's default)
    scheduler: str = "fcfs"
    ttft_slo_ms: float = 1000.0         # a function's TTFT SLO unless it sets SLFAAS_TTFT_SLO_MS
    max_queue_per_function: int = 64    # slo: requests waiting per function; beyond, 429
    max_queue_s: float = 30.0           # slo: the longest a request waits for an instance; then 429
    max_running_batches: int = 0        # slo: batches running at once on the device, at most (0: max_instances)
    shared_max_batch_size: int = 16     # a shared runtime's capacity (functions in shared execution)
    shared_memory_mb: int = 8192        # a shared runtime's memory bound
    shared_gpu_mb: int = 0              # a shared runtime's device memory beside its backbone (0: no bound)

    @property
    def device_bounds_mb(self) -> tuple[int, int]:
        """Device memory beside the backbone: a function's own runtime, a shared runtime (0: none)."""
        return self.instance_gpu_mb, self.shared_gpu_mb

    def __post_init__(self) -> None:
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler must be one of {', '.join(SCHEDULERS)}, got {self.scheduler!r}")
        if not (self.ttft_slo_ms > 0 and self.max_queue_per_function >= 1 and self.max_queue_s > 0
                and self.max_running_batches >= 0 and self.shared_max_batch_size >= 1 and self.shared_memory_mb > 0
                and self.shared_gpu_mb >= 0):
            raise ValueError("scheduling settings must be positive (--ttft-slo-ms, --max-queue-per-function, "
                             "--max-queue-s, --max-running-batches, --shared-runtime-gpu-mb)")

    def keep_alive_histogram(self) -> HistogramKeepAlive:
        """The histogram policy with this node's bins and TTL (also what a function that
        chooses the histogram policy on a fixed-TTL node gets)."""
        return HistogramKeepAlive(bin_width_s=self.keep_alive_bin_s,
                                  range_s=max(self.keep_alive_range_s, self.keep_alive_bin_s),
                                  fallback_ttl_s=self.keep_alive_s, out_of_bounds_ttl_s=self.keep_alive_s)

    def keep_alive_default(self) -> KeepAlivePolicy:
        """The node's keep-alive policy; ValueError (a user-facing message) for bad settings."""
        if self.keep_alive_policy not in ("fixed", "histogram"):
            raise ValueError(f"unknown keep-alive policy {self.keep_alive_policy!r} (available: fixed, histogram)")
        histogram = self.keep_alive_histogram()
        return FixedKeepAlive(self.keep_alive_s) if self.keep_alive_policy == "fixed" else histogram
