"""Values that cross between the control plane and a node (``NodeApi``): frozen, plain data."""
from __future__ import annotations

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

    @property
    def pool_key(self) -> tuple[str, str]:
        return (self.name, self.revision_id)


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
    provisioned: tuple[ProvisionedInfo, ...] = ()
    keep_alive_policy: str = "fixed"   # the node's default (a function may set its own)
