"""Values of the billing module: what one invocation used, and what one node spent.

Device time is accounted by processor sharing (``timeline.DeviceTimeline``): each moment of a
node's device time goes either to the activities running then (split evenly among them) or to
one overhead category, so that billed + overhead = the node's elapsed device time by
construction, and a report can check it against the node's own clock.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Mapping

# Cold-start phases, in order (seconds each; a runtime reports the ones it can see).
INIT_PHASES = ("sandbox_start", "imports", "device_init", "backbone_attach", "adapter_load", "handler_init")
# Where an invocation's runtime came from: a warm instance (no init); a runtime pre-warmed for
# its backbone (only the adapter copied into its slots); a pre-started generic runtime from the
# warm pool (imports done); or nothing pre-loaded (a fresh process).
PRELOAD_TIERS = ("warm", "prewarmed", "pool", "cold")
# Where a cold start's adapter came from: a node tier ("gpu", "host") or the code store ("disk").
ADAPTER_TIERS = ("", "gpu", "host", "disk")
# Overhead categories of a node's device time (not billed to anyone: the platform's cost).
OVERHEAD_KINDS = ("runtime", "keep_alive", "preload", "idle_backbone", "node_idle")


@dataclass(frozen=True)
class UsageRecord:
    """One invocation's usage and its price (billed when it ended, kept in the registry).

    ``compute_device_s`` is this request's share of its batch's device seconds (CUDA events on
    GPU, wall time on CPU), ``init_device_s`` the cold start it caused (0 when warm): together
    the billed device seconds. ``runtime_overhead_s`` is the rest of its wall share that was
    not device work (HTTP, tokenizer, scheduling): platform overhead, not billed."""

    request_id: str
    function_name: str
    version: str
    node_id: str
    device: str                 # "cpu", "cuda:0"
    device_type: str            # the price sheet's key: "cpu", "H100", "H200", "A100", ...
    start_ts: float
    end_ts: float
    status: str                 # success | function_error | failed
    cold_start: bool
    preload_tier: str           # one of PRELOAD_TIERS
    batch_size: int
    batch_device_s: float       # the whole batch's device seconds
    compute_device_s: float     # this request's share of them (billed)
    init_device_s: float        # billed init of the cold start this invocation caused
    runtime_overhead_s: float
    queue_s: float
    tokens_in: int
    tokens_out: int
    memory_mb: int
    cost_usd: Decimal           # request fee + billed device seconds at the sheet's rate
    init_phases_s: Mapping[str, float] = field(default_factory=dict)
    adapter_tier: str = ""      # one of ADAPTER_TIERS ("" when warm)

    @property
    def billed_device_s(self) -> float:
        return self.compute_device_s + self.init_device_s


@dataclass(frozen=True)
class NodeUsage:
    """What one node (session: from its start to its last flush) spent, by category. The
    sums satisfy ``billed_device_s + provisioned_s + sum(overhead_s.values()) == elapsed_s``
    up to float rounding; ``keep_alive_by_function_s`` splits ``overhead_s["keep_alive"]``.
    ``provisioned_by_function_s``: device time of instances held for provisioned concurrency
    (their share while idle, and their init), billed to their functions, not overhead.
    ``idle_instance_by_function_s``: instance-seconds held idle by keep-alive (each idle
    instance's whole idle time, overlapping other work: the memory keep-alive holds)."""

    node_id: str
    device: str
    device_type: str
    start_ts: float
    end_ts: float
    elapsed_s: float
    billed_device_s: float
    overhead_s: Mapping[str, float]                 # OVERHEAD_KINDS → seconds
    keep_alive_by_function_s: Mapping[str, float]
    backbone_bytes: int = 0     # resident backbones (largest seen), for counterfactuals
    backbone_load_s: float = 0.0  # measured load time of those bytes
    provisioned_by_function_s: Mapping[str, float] = field(default_factory=dict)
    idle_instance_by_function_s: Mapping[str, float] = field(default_factory=dict)

    @property
    def overhead_total_s(self) -> float:
        return sum(self.overhead_s.values())

    @property
    def provisioned_s(self) -> float:
        return sum(self.provisioned_by_function_s.values())


@dataclass(frozen=True)
class InstanceUsage:
    """One instance's life on a node, from its start to its end: what a serverless platform
    without sharing bills (each container pays for every second it is alive, cold start and
    keep-alive included, in proportion to the device memory it holds; ``billing.policy_costs``).
    ``end_ts`` is None while it is alive (a live listing)."""

    instance_id: str
    function_name: str
    version: str
    node_id: str
    device: str
    device_type: str
    memory_mb: int              # the function's MemorySize
    start_ts: float
    end_ts: float | None = None
    ready_ts: float | None = None   # its init ended (None: never ready)
    device_mb: float | None = None  # device memory it held (NVML after its first invocation; None on CPU)
    device_mb_measured: bool = False   # False: the node's admission estimate stood in for a measure
    invocations: int = 0

    def alive_s(self, since_ts: float, until_ts: float) -> float:
        """Seconds it was alive within [since_ts, until_ts] (a live one: up to ``until_ts``)."""
        end = until_ts if self.end_ts is None else min(self.end_ts, until_ts)
        return max(0.0, end - max(self.start_ts, since_ts))
