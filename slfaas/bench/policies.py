"""Serving policies as configurations of the same server, so that a comparison runs the same
code under each (``slfaas bench compare``). Pure: a policy is its server's flags, its functions'
environment and the way its platform bills (``slfaas.billing.policy_costs``).

* ``serverlesslora``: slfaas as it is: one shared backbone per node, pre-warmed runtimes,
  batching inside an instance (and the SLO-aware scheduler where the server has one).
* ``no-sharing``: each instance loads its own backbone from the checkpoint (from_pretrained),
  nothing pre-warmed, one request at a time; device-memory admission counts a whole backbone
  per instance, so instances that do not fit evict idle ones or the request waits.
* ``serverlessllm-like``: no sharing, each instance copies its backbone from the node's
  host-memory checkpoint cache into its own device memory; keep-alive; nothing pre-warmed.
* ``serverful``: one always-on process per base model serving every adapter, co-batched
  (``SLFAAS_SHARED_EXECUTION``), provisioned before the window and billed the whole device.
* ``serverlesslora-cobatched``: slfaas with every function opted in to shared execution: the
  platform's shared runtime batches all functions' requests in the same passes (started, and
  each adapter loaded, before the window, as pre-loading would), billed per request as
  ``serverlesslora``. Not one of the paper's baselines: slfaas's other configuration.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from slfaas.bench.errors import TraceError

POLICIES = ("serverlesslora", "no-sharing", "serverlessllm-like", "serverful", "serverlesslora-cobatched")
MAX_BATCH_SIZE = "SLFAAS_MAX_BATCH_SIZE"
SHARED_EXECUTION = "SLFAAS_SHARED_EXECUTION"
TTFT_SLO_MS = "SLFAAS_TTFT_SLO_MS"
ALWAYS_ON_KEEP_ALIVE_S = 86_400.0
_NOTHING_PREWARMED = ("--prewarm-min", "0", "--prewarm-budget-mb", "0", "--host-tier-mb", "0")


@dataclass(frozen=True)
class CommonSettings:
    """What every policy gets alike (written into the results)."""

    device: str = "cpu"
    keep_alive_s: float = 60.0
    max_instances: int = 32
    memory_mb: int = 2048                 # every function's MemorySize
    timeout_s: int = 900                  # every function's Timeout
    instance_gpu_mb: int = 1536           # --instance-gpu-mb (an instance's memory beside its backbone)
    max_batch_size: int = 8               # batching policies' SLFAAS_MAX_BATCH_SIZE
    init_timeout_s: float = 600.0
    slo_ms: float | None = None
    server_args: tuple[str, ...] = ()     # given to every server (e.g. --insecure-sandbox, --prices F)
    prewarmed: int = 0                    # serverlesslora's --prewarm-min (0: the server's default)
    # containers are billed through their keep-alive: after the window the harness waits for the
    # node to end them (False: billed up to the window's end only, a lower bound)
    bill_keep_alive: bool = True

    def __post_init__(self) -> None:
        if self.keep_alive_s < 0 or self.max_instances < 1 or self.memory_mb < 128 or self.max_batch_size < 1:
            raise TraceError("keep-alive must be >= 0 s, max instances and the batch size >= 1, memory >= 128 MB")
        if not 0 <= self.prewarmed <= 64:
            raise TraceError("pre-warmed runtimes must be between 0 and 64")

    def args(self, keep_alive_s: float | None = None) -> tuple[str, ...]:
        keep = self.keep_alive_s if keep_alive_s is None else keep_alive_s
        return ("--device", self.device, "--keep-alive-s", f"{keep:g}", "--max-instances",
                str(self.max_instances), "--instance-gpu-mb", str(self.instance_gpu_mb), "--init-timeout-s",
                f"{self.init_timeout_s:g}", "--verify-interval-s", "0", *self.server_args)


@dataclass(frozen=True)
class ServerFeatures:
    """What the server under test can do (probed, so the harness runs on any checkout)."""

    slo_scheduler: bool = False       # `slfaas server --scheduler slo|fcfs`
    shared_execution: bool = False    # the SLFAAS_SHARED_EXECUTION function setting
    shared_batch_size: bool = False   # `slfaas server --shared-batch-size N`


@dataclass(frozen=True)
class Policy:
    name: str
    server_args: tuple[str, ...]
    function_env: Mapping[str, str]
    billing: str                      # slfaas.billing.policy_costs.BILLING_MODELS
    provisioned: bool = False         # every function invoked once before the window (always on)
    prewarms: bool = False            # keeps runtimes pre-warmed: measured once its pools are full
    complete: bool = True             # False: a feature it needs is missing on this server
    notes: tuple[str, ...] = field(default_factory=tuple)

    def describe(self) -> dict[str, object]:
        return {"name": self.name, "server_args": list(self.server_args), "function_env": dict(self.function_env),
                "billing": self.billing, "provisioned": self.provisioned, "prewarms": self.prewarms,
                "complete": self.complete,
                "notes": list(self.notes)}


def parse_policies(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in POLICIES]
    if not names or unknown:
        raise TraceError(f"unknown policy {', '.join(unknown) or repr(text)}: choose from {', '.join(POLICIES)}")
    if len(set(names)) != len(names):
        raise TraceError(f"a policy is named twice in {text!r}")
    return names


def _slo_scheduling(common: CommonSettings, features: ServerFeatures) -> tuple[tuple[str, ...], dict[str, str]]:
    """slfaas's SLO-aware scheduler, where the server has it: its flag, and the functions' TTFT SLO."""
    if not features.slo_scheduler:
        return (), {}
    return ("--scheduler", "slo"), ({} if common.slo_ms is None else {TTFT_SLO_MS: str(int(common.slo_ms))})


def make_policy(name: str, common: CommonSettings, features: ServerFeatures) -> Policy:
    base = common.args()
    batch = {MAX_BATCH_SIZE: str(common.max_batch_size)}
    one_at_a_time = {MAX_BATCH_SIZE: "1"}
    if name == "serverlesslora":
        slo_args, slo_env = _slo_scheduling(common, features)
        args, env, notes = base + slo_args, {**batch, **slo_env}, []
        if common.prewarmed:   # the pool sized for the functions deployed; the budget at the admission bound
            args += ("--prewarm-min", str(common.prewarmed),
                     "--prewarm-budget-mb", str(common.instance_gpu_mb * common.prewarmed))
        if not features.slo_scheduler:
            notes.append("no SLO-aware scheduler on this server (--scheduler slo): its default scheduler ran")
        return Policy(name, args, env, "per-request", prewarms=True, notes=tuple(notes))
    # baselines queue nothing on the node: a request with no room is refused and the client waits
    fcfs = ("--scheduler", "fcfs") if features.slo_scheduler else ()
    if name == "no-sharing":
        return Policy(name, (*base, "--backbone", "private-checkpoint", *_NOTHING_PREWARMED, *fcfs), one_at_a_time,
                      "container")
    if name == "serverlessllm-like":
        return Policy(name, (*base, "--backbone", "private-host-cache", *_NOTHING_PREWARMED, *fcfs), one_at_a_time,
                      "container", notes=("backbones copied from the node's host-memory image (a checkpoint cache)",))
    if name == "serverlesslora-cobatched":
        slo_args, slo_env = _slo_scheduling(common, features)
        args, env = (*base, "--prewarm-min", "0", "--prewarm-budget-mb", "0"), {**batch, **slo_env}
        if features.shared_batch_size:
            args += ("--shared-batch-size", str(common.max_batch_size))
        args += slo_args
        if not features.shared_execution:
            return Policy(name, args, env, "per-request", provisioned=True, complete=False, notes=(
                "INCOMPLETE: this server has no shared execution across adapters (SLFAAS_SHARED_EXECUTION): "
                "each function ran its own batching instances",))
        return Policy(name, args, {**env, SHARED_EXECUTION: "1"}, "per-request", provisioned=True, notes=(
            "every function opted in to shared execution; the shared runtime started and each adapter loaded "
            "before the window (one request per function), as pre-loading would",))
    if name == "serverful":
        always_on = (*common.args(ALWAYS_ON_KEEP_ALIVE_S), "--prewarm-min", "0", "--prewarm-budget-mb", "0")
        if features.shared_execution:
            if features.shared_batch_size:
                always_on += ("--shared-batch-size", str(common.max_batch_size))
            return Policy(name, always_on, {**batch, SHARED_EXECUTION: "1"}, "whole-device", provisioned=True)
        return Policy(name, always_on, batch, "whole-device", provisioned=True, complete=False, notes=(
            "INCOMPLETE: this server has no shared execution across adapters (SLFAAS_SHARED_EXECUTION); it ran "
            "one always-on instance per function, each batching its own requests, billed as one whole device",))
    raise TraceError(f"unknown policy {name!r}: choose from {', '.join(POLICIES)}")
