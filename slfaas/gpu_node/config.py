"""A node's settings (frozen): what the server's flags say about the node."""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from slfaas.gpu_node.policy.keepalive import FixedKeepAlive, HistogramKeepAlive, KeepAlivePolicy


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
