"""A node's settings (frozen): what the server's flags say about the node."""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class NodeConfig:
    data_dir: Path
    keep_alive_s: float = 300.0
    max_instances: int = 32
    init_timeout_s: float = 300.0
    device: str = "cpu"
    python: str = sys.executable
    verify_interval_s: float = 0.0      # backbone integrity checks; 0 = only on demand
    instance_gpu_mb: int = 1536         # upper bound of an instance's GPU memory (context, adapter, KV)
    # "shared" (slfaas), or a baseline without sharing: "private-checkpoint" (each instance loads
    # its own from the checkpoint), "private-host-cache" (each copies the node's host image)
    backbone: str = "shared"
