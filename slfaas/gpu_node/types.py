"""Values that cross between the control plane and a node (``NodeApi``): frozen, plain data."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping


@dataclass(frozen=True)
class KeepAliveSpec:
    """A function's own keep-alive settings (validated by the control plane); None: the
    node's default. ``policy``: "fixed" or "histogram"; ``ttl_s``: the fixed TTL, or the
    histogram policy's fallback TTL; ``bin_width_s``: the idle-time histogram's bin width."""

    policy: str | None = None
    ttl_s: float | None = None
    bin_width_s: float | None = None


@dataclass(frozen=True)
class FunctionSpec:
    """Everything the node needs to run one function version. ``revision_id`` changes with
    every code or configuration update, so instances of an old revision are never reused."""

    name: str
    version: str
    revision_id: str
    arn: str
    code_dir: Path
    base_model_path: Path
    handler: str
    timeout_s: int
    memory_mb: int
    environment: Mapping[str, str] = field(default_factory=dict)
    keep_alive: KeepAliveSpec = KeepAliveSpec()
    max_batch_size: int = 1     # invocations one instance may hold at once (its runtime batches them)
    ttft_slo_ms: int | None = None   # the batcher's time-to-first-token target; None: the node's default
    shared_execution: bool = False   # co-batched with other adapters of its backbone in a platform runtime

    @property
    def pool_key(self) -> tuple[str, str]:
        """Instances of one key are interchangeable. A function in shared execution runs in its
        backbone's shared runtime, so its key is that runtime's (revision ids are UUIDs: no
        function's key is ever ``SHARED_REVISION``)."""
        if self.shared_execution:
            return shared_pool_key(self.base_model_path)
        return (self.name, self.revision_id)

    @property
    def is_shared_runtime(self) -> bool:
        """The platform runtime that co-batches a backbone's functions in shared execution."""
        return self.revision_id == SHARED_REVISION and self.name.startswith(SHARED_NAME_PREFIX)

    @property
    def adapter_id(self) -> str:
        """Names this revision's adapter inside a shared runtime."""
        return hashlib.sha256(f"{self.code_dir}\0{self.revision_id}".encode()).hexdigest()[:32]


SHARED_REVISION = "shared"
SHARED_NAME_PREFIX = "slfaas-shared-"


def shared_pool_key(base_model_path: Path) -> tuple[str, str]:
    digest = hashlib.sha256(str(Path(base_model_path)).encode()).hexdigest()[:12]
    return (f"{SHARED_NAME_PREFIX}{digest}", SHARED_REVISION)


@dataclass(frozen=True)
class InvocationRequest:
    request_id: str
    function: FunctionSpec
    payload: bytes
    client_context: str | None = None
    response_stream: bool = False   # InvokeWithResponseStream: the runtime streams its response


@dataclass(frozen=True)
class InvocationResult:
    """``function_error`` is AWS's X-Amz-Function-Error value ("Unhandled"/"Handled") or None."""

    request_id: str
    payload: bytes
    function_error: str | None
    error_type: str
    instance_id: str
    cold_start: bool
    start_ts: float
    end_ts: float
    init_duration_ms: float | None
    queue_ms: float
    duration_ms: float
    metrics: dict | None = None   # a streamed response's trailer: usage and ttft (no JSON body to read)
    usage: Any = None             # slfaas.billing.records.UsageRecord: what billing charged


@dataclass(frozen=True)
class InstanceInfo:
    instance_id: str
    function_name: str
    version: str
    revision_id: str
    state: str
    pid: int | None
    started_ts: float
    last_used_ts: float
    invocations: int
    adapter_bytes: int | None = None   # the adapter's weights as loaded (device dtype)
    init_report: dict = field(default_factory=dict)
    gpu_mb: float | None = None        # measured device memory of this instance (CUDA)
    provisioned: bool = False          # held for a provisioned-concurrency target: never reaped or evicted

    @property
    def alive(self) -> bool:
        """Starting or serving (not stopping, stopped or failed)."""
        return self.state in ("STARTING", "IDLE", "BUSY")


@dataclass(frozen=True)
class BackboneInfo:
    model_path: str
    device: str
    size_bytes: int
    tensor_count: int
    load_s: float
    load_gb_per_s: float
    loaded_ts: float
    sha256: str | None = None          # only when asked for (reading the whole image costs time)


@dataclass(frozen=True)
class GpuMemory:
    """Device totals, what the node's backbones and the instances' adapters hold, and per-instance
    use measured by NVML (None where NVML is not available)."""

    device: str
    name: str
    total_mb: int
    used_mb: int
    free_mb: int
    backbones_mb: int
    adapters_mb: float
    instances: Mapping[str, int] | None = None
    instance_estimate_mb: int = 0      # what admission expects the next instance to need


@dataclass(frozen=True)
class LogChunk:
    """Whole lines of a function's log, and where the next read continues."""

    text: str
    next_offset: int   # the byte offset a follower asks for next


@dataclass(frozen=True)
class IntegrityEvent:
    ts: float
    model_path: str
    ok: bool
    elapsed_ms: float
    bad_tensors: tuple[str, ...]
    stopped_instances: tuple[str, ...]
    reload_s: float | None


@dataclass(frozen=True)
class ProvisionedInfo:
    """One provisioned-concurrency target on the node: ``ready`` of ``requested`` instances of
    the version are up (initialised, idle or busy). ``failure``: why the last start failed."""

    function_name: str
    version: str
    revision_id: str
    requested: int
    ready: int
    starting: int = 0
    failure: str | None = None
    failures: int = 0                  # consecutive failed starts (retried with a backoff)


@dataclass(frozen=True)
class PoolInfo:
    """One warm pool: ``kind`` "warm-pool" (generic runtimes, imports done) or "prewarmed"
    (backbone attached, empty slots, kernels warm) for ``base_model`` on ``device``."""

    name: str
    sandbox: str
    base_model: str | None
    device: str | None
    target: int
    held: int
    ready: int


@dataclass(frozen=True)
class TierInfo:
    """A node-private adapter tier: which adapters it holds (by code hash) within its budget."""

    tier: str                   # "host" (sealed memfds) or "gpu"
    budget_bytes: int
    used_bytes: int
    adapters: tuple[str, ...]
    hits: int = 0               # cold starts that took their adapter from this tier
    misses: int = 0             # ... that had to read it from disk (the code store)


@dataclass(frozen=True)
class PreloadInfo:
    """The preloader's last plan, as the node applied it."""

    ts: float
    runtimes: tuple[tuple[str, str, int], ...]          # (base model, device, pre-warmed runtimes)
    adapters: tuple[tuple[str, str, str], ...]          # (function, device, tier)
    prewarm_budget_bytes: int
    host_budget_bytes: int
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class NodeInfo:
    node_id: str
    device: str
    sandbox: str
    max_instances: int
    warm_pool_target: int
    warm_pool_held: int
    backbones: tuple[BackboneInfo, ...]
    instances: tuple[InstanceInfo, ...]
    gpu: GpuMemory | None = None
    pools: tuple[PoolInfo, ...] = ()
    tiers: tuple[TierInfo, ...] = ()
    preload: PreloadInfo | None = None
    # several nodes behind one control plane (a NodeSet): each one's own report; the fields
    # above then add theirs up (instances, backbones, limits) and ``device`` lists their devices
    nodes: tuple["NodeInfo", ...] = ()
    state: str = "alive"               # "alive", or "lost": the node died and takes no work
    host: str = ""                     # where the node runs (Ray: its node's address)
    backbone_mode: str = "shared"      # or a baseline's: "private-checkpoint", "private-host-cache"
    concurrency_limit: int | None = None   # invocations it may hold at once (None: one per instance)
    provisioned: tuple[ProvisionedInfo, ...] = ()
    keep_alive_policy: str = "fixed"   # the node's default (a function may set its own)

    @property
    def max_concurrency(self) -> int:
        return self.concurrency_limit if self.concurrency_limit is not None else self.max_instances


@dataclass(frozen=True)
class NodeSummary:
    """A node in a few numbers, for choosing among several nodes (cheap to make and to send:
    no per-instance details). ``adapter_tiers``: the adapters (code digests) in the node's host
    tier; ``tier_bytes_per_s`` stays empty (a host-tier copy is not measured: counted as free)."""

    node_id: str
    device: str
    warm_free: Mapping[tuple[str, str], int]   # (function, revision) → instances with room now
    backbones: Mapping[str, int]               # resident model path → size in bytes
    live_instances: int
    idle_instances: int
    max_instances: int
    load_bytes_per_s: float                    # measured backbone load bandwidth (0: nothing loaded yet)
    free_mb: float | None = None               # device memory free (None: no admission, CPU)
    instance_mb: float = 0.0
    adapter_tiers: Mapping[str, str] = field(default_factory=dict)
    tier_bytes_per_s: Mapping[str, float] = field(default_factory=dict)
