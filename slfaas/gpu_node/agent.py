"""The node agent: owns the backbones, starts and reuses function instances, runs invocations.

Invocation path: acquire an instance (a warm one of the same function revision, else a cold
start) → hand the request over through that instance's Runtime API → release. Instances idle
for longer than ``keep_alive_s`` are stopped by a reaper thread.
"""
from __future__ import annotations

import json
import logging
import os
import queue
import shutil
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from slfaas.billing.meter import InvocationFacts, Meter
from slfaas.billing.prices import PriceSheet
from slfaas.billing.records import NodeUsage, UsageRecord
from slfaas.errors import TooManyRequests
from slfaas.functions.runtime_client import LOG_SYNC_MARKER
from slfaas.gpu_node.backbone import BackboneInfo, BackboneOwner
from slfaas.gpu_node.instance import Instance, InstanceState, Outcome, error_payload
from slfaas.gpu_node.logs import FunctionLogs
from slfaas.gpu_node.runtime_api import RuntimeApiServer
from slfaas.gpu_node.sandboxes.base import SandboxFactory, SandboxSpec
from slfaas.gpu_node.types import FunctionSpec, InstanceInfo, InvocationRequest, InvocationResult

log = logging.getLogger(__name__)

_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])
# How long an invocation's END/REPORT waits at most for the runtime's output to reach the log
# (a runtime that says "log_sync" in its init report writes the marker before each response).
LOG_SYNC_TIMEOUT_S = 5.0
# What a runtime inherits from the node's environment; everything else is the function's own.
_PASS_ENV = frozenset({"PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "LD_LIBRARY_PATH", "VIRTUAL_ENV"})
_PASS_ENV_PREFIXES = ("CUDA_", "NVIDIA_", "NCCL_", "NVSHMEM_", "TORCH_", "PYTORCH_", "OMP_", "MKL_")


def node_environ() -> dict[str, str]:
    """What a runtime inherits from the node's environment (a warm-pool process starts with
    just this and ``runtime_fixed_env``: no function is known yet)."""
    return {k: v for k, v in os.environ.items() if k in _PASS_ENV or k.startswith(_PASS_ENV_PREFIXES)}


def runtime_fixed_env() -> dict[str, str]:
    """Set for every runtime, over the function's own environment."""
    pythonpath = os.environ.get("PYTHONPATH")
    return {"PYTHONPATH": _PACKAGE_ROOT + (os.pathsep + pythonpath if pythonpath else ""),
            "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false"}


@dataclass(frozen=True)
class NodeConfig:
    data_dir: Path
    keep_alive_s: float = 300.0
    max_instances: int = 32
    init_timeout_s: float = 300.0
    device: str = "cpu"
    python: str = sys.executable
    verify_interval_s: float = 0.0      # backbone integrity checks; 0 = only on demand
    instance_gpu_mb: int = 1536         # GPU memory an instance may need (context, adapter, KV)


@dataclass(frozen=True)
class IntegrityEvent:
    ts: float
    model_path: str
    ok: bool
    elapsed_ms: float
    bad_tensors: tuple[str, ...]
    stopped_instances: tuple[str, ...]
    reload_s: float | None


class NodeAgent:
    def __init__(self, config: NodeConfig, sandboxes: SandboxFactory, backbones: BackboneOwner | None = None,
                 on_integrity: Callable[[IntegrityEvent], None] | None = None, prices: PriceSheet | None = None,
                 on_usage: Callable[[UsageRecord], None] | None = None,
                 on_node_usage: Callable[[NodeUsage], None] | None = None):
        self.config = config
        self.node_id = uuid.uuid4().hex[:12]
        self.sandboxes = sandboxes
        self.backbones = backbones or BackboneOwner(config.device)
        self.on_integrity = on_integrity
        self.meter = Meter(self.node_id, config.device, prices, gpu_name=_gpu_name(config.device),
                           on_usage=on_usage, on_node_usage=on_node_usage)
        self.meter.start_flushing(probe=lambda: (len(self.backbones.loaded()), self.sandboxes.warm_count()))
        self._verify_lock = threading.Lock()
        self.logs = FunctionLogs(Path(config.data_dir) / "logs")
        # Unix socket paths are limited to 108 bytes, so they live in a short temp dir.
        self._socket_dir = Path(tempfile.mkdtemp(prefix="slfaas-rt-"))
        self._lock = threading.Lock()
        self._instances: dict[str, Instance] = {}
        self._apis: dict[str, RuntimeApiServer] = {}
        self._requests: dict[str, _Tracked] = {}   # in flight, by request id: what cancel() stops
        # Set by retire(): instances of a retired (name, revision) are stale, and so are those of a
        # (name, version) whose current revision is another one (started after the retire).
        self._retired: set[tuple[str, str]] = set()
        self._current_revision: dict[tuple[str, str], str | None] = {}
        self._closed = threading.Event()
        self._reaper = threading.Thread(target=self._reap_loop, daemon=True, name="keep-alive-reaper")
        self._reaper.start()
        if config.verify_interval_s > 0:
            threading.Thread(target=self._verify_loop, daemon=True, name="backbone-verify").start()

    # public API
    def prepare(self, function: FunctionSpec) -> BackboneInfo:
        """Make sure the function's backbone is resident (the Pending → Active step)."""
        self.backbones.acquire(function.base_model_path)
        self._meter_backbones()
        return next(b for b in self.backbones.loaded()
                    if Path(b.model_path) == Path(function.base_model_path).resolve())

    def _meter_backbones(self) -> None:
        loaded = self.backbones.loaded()
        largest = max(loaded, key=lambda b: b.size_bytes, default=None)
        self.meter.backbone_resident(len(loaded), largest.size_bytes if largest else 0,
                                     largest.load_s if largest else 0.0)

    def verify_backbones(self) -> list[IntegrityEvent]:
        """Check every backbone against its load-time digest. On a mismatch: stop the
        instances that borrow it (their outputs can no longer be trusted), reload it from
        its files, and report the event; the node itself keeps serving."""
        events = []
        with self._verify_lock:
            for path, backbone in self.backbones.backbones().items():
                report = backbone.verify()
                stopped: list[str] = []
                reload_s = None
                if not report.ok:
                    log.error("INTEGRITY: backbone %s changed (%s); stopping its instances and reloading",
                              path, ", ".join(report.bad_tensors[:8]) or "unknown tensors")
                    with self._lock:
                        borrowers = [i for i in self._instances.values()
                                     if Path(i.function.base_model_path).resolve() == path]
                    for inst in borrowers:
                        inst.begin_stop()  # deliberate: an in-flight call still gets its error
                        if inst.sandbox is not None:
                            inst.sandbox.kill()
                        stopped.append(inst.instance_id)
                        self.logs.append(inst.function.name, inst.instance_id,
                                         f"stopped: backbone integrity check failed ({path.name})")
                    for inst in borrowers:
                        if inst.sandbox is not None:
                            inst.sandbox.wait(10)
                    reload_s = backbone.reload()
                    log.warning("backbone %s reloaded in %.2f s after integrity failure", path, reload_s)
                event = IntegrityEvent(time.time(), str(path), report.ok, report.elapsed_ms, report.bad_tensors,
                                       tuple(stopped), reload_s)
                events.append(event)
                if self.on_integrity is not None:
                    try:
                        self.on_integrity(event)
                    except Exception:
                        log.exception("recording an integrity event failed")
        return events

    def _verify_loop(self) -> None:
        while not self._closed.wait(self.config.verify_interval_s):
            try:
                self.verify_backbones()
            except Exception:
                log.exception("scheduled backbone verification failed")

    def gpu_memory(self) -> dict | None:
        if not self.config.device.startswith("cuda"):
            return None
        from slfaas.gpu_node.gpu_stats import gpu_memory_report
        infos = self.instances()
        pids = {i.pid: i.instance_id for i in infos if i.pid}
        return gpu_memory_report(self.config.device, pids,
                                 sum(b.size_bytes for b in self.backbones.backbones().values()),
                                 sum(i.adapter_bytes or 0 for i in infos))

    def invoke(self, request: InvocationRequest,
               on_chunk: Callable[[bytes], None] | None = None) -> InvocationResult:
        """Run one invocation to its end. ``on_chunk``: receives a streamed response's chunks
        as they arrive (``request.response_stream``); it must not block."""
        submitted_ts = time.time()
        instance, cold = self._acquire(request.function)
        return self._invoke_on(instance, cold, request, submitted_ts, on_chunk)

    def invoke_stream(self, request: InvocationRequest) -> "ResponseStream":
        """Start a streaming invocation: capacity errors (TooManyRequests) raise here, before a
        response is started; then iterate the returned stream for the chunks as the runtime
        sends them, and read its ``result`` at the end."""
        submitted_ts = time.time()
        instance, cold = self._acquire(request.function)
        stream = ResponseStream()
        threading.Thread(target=stream._run, daemon=True, name=f"stream-{request.request_id[:8]}",
                         args=(lambda: self._invoke_on(instance, cold, request, submitted_ts, stream._chunks.put),)
                         ).start()
        return stream

    def _invoke_on(self, instance: Instance, cold: bool, request: InvocationRequest, submitted_ts: float,
                   on_chunk: Callable[[bytes], None] | None) -> InvocationResult:
        tracked = _Tracked(instance)
        with self._lock:
            self._requests[request.request_id] = tracked
        try:
            if cold:
                ready = instance.wait_ready(self.config.init_timeout_s)
                now = time.time()
                self.meter.instance_ready(instance.instance_id, now, (now - instance.started_ts))
                if not ready:
                    outcome = instance.init_error or Outcome(
                        error_payload("Runtime.InitTimeout",
                                      f"Init did not finish within {self.config.init_timeout_s:.0f} s"),
                        "Runtime.InitTimeout")
                    instance.fail_and_kill()
                    usage = self._meter(request, instance, outcome, cold, submitted_ts, now)
                    self._report(request, instance, outcome, cold, now, usage)
                    return self._result(request, instance, outcome, cold, submitted_ts, now, usage)
            dispatch_ts = time.time()
            if not self._dispatching(tracked):
                outcome = Outcome(error_payload("Runtime.Cancelled", "The caller went away before the invocation "
                                                "started"), "Runtime.Cancelled")
                usage = self._meter(request, instance, outcome, cold, submitted_ts, dispatch_ts)
                return self._result(request, instance, outcome, cold, submitted_ts, dispatch_ts, usage)
            self.logs.append(request.function.name, instance.instance_id,
                             f"START RequestId: {request.request_id} Version: {request.function.version}")
            self.meter.invocation_started(request.request_id, instance.instance_id, dispatch_ts)
            outcome, _call = instance.run(request, cold, dispatch_ts, sink=on_chunk)
            if outcome.from_runtime and instance.init_facts.get("log_sync"):
                # its output reaches the log through a pipe: wait until all of it has
                instance.wait_log_synced(request.request_id, LOG_SYNC_TIMEOUT_S)
            usage = self._meter(request, instance, outcome, cold, submitted_ts, dispatch_ts)
            self._report(request, instance, outcome, cold, dispatch_ts, usage)
            return self._result(request, instance, outcome, cold, submitted_ts, dispatch_ts, usage)
        finally:
            with self._lock:
                self._requests.pop(request.request_id, None)
            self.meter.invocation_aborted(request.request_id, time.time())   # no-op once metered
            instance.release()
            if instance.state is InstanceState.IDLE:
                self.meter.instance_idle(instance.instance_id, instance.function.name, time.time())
            if self._stale(instance) and instance.try_reserve():
                self._stop(instance)

    # cancellation
    def cancel(self, request_id: str) -> bool:
        """Stop the work of a request whose caller went away: not dispatched yet, it never is
        (the instance it waited for serves others); running, its instance is killed, so the
        function does not keep the device busy. False when the node is not working on it."""
        with self._lock:
            tracked = self._requests.get(request_id)
            if tracked is None:
                return False
            tracked.cancelled = True
            running = tracked.instance if tracked.dispatched else None
        if running is not None:
            log.info("request %s cancelled: stopping instance %s", request_id, running.instance_id)
            self.logs.append(running.function.name, running.instance_id,
                             f"CANCELLED RequestId: {request_id}: the caller went away; stopping the instance")
            running.fail_and_kill()
        return True

    def _dispatching(self, tracked: "_Tracked") -> bool:
        """Mark a request dispatched, unless it was cancelled first."""
        with self._lock:
            tracked.dispatched = not tracked.cancelled
            return tracked.dispatched

    def _meter(self, request: InvocationRequest, inst: Instance, outcome: Outcome, cold: bool,
               submitted_ts: float, dispatch_ts: float) -> UsageRecord | None:
        f = request.function
        facts = InvocationFacts(
            request_id=request.request_id, function_name=f.name, version=f.version, memory_mb=f.memory_mb,
            instance_id=inst.instance_id, cold_start=cold,
            preloaded=bool(inst.sandbox is not None and inst.sandbox.preloaded), submitted_ts=submitted_ts,
            dispatch_ts=dispatch_ts, end_ts=time.time(), error_type=outcome.error_type, payload=outcome.payload,
            metrics=outcome.metrics)
        try:
            return self.meter.invocation_finished(facts, inst.init_facts)
        except Exception:  # billing must never fail an invocation; the gap shows as overhead
            log.exception("metering invocation %s failed", request.request_id)
            return None

    def instances(self) -> list[InstanceInfo]:
        with self._lock:
            items = list(self._instances.values())
        return [InstanceInfo(i.instance_id, i.function.name, i.function.version, i.function.revision_id,
                             i.state.value, i.sandbox.pid if i.sandbox else None, i.started_ts,
                             i.last_used_ts, i.invocations, i.init_facts.get("adapter_bytes"),
                             dict(i.init_facts)) for i in items]

    def retire(self, function_name: str, keep_revision: str | None = None, version: str | None = None) -> int:
        """Stop idle instances of ``function_name`` (of its ``version`` only, when given) except
        those of ``keep_revision``; busy ones finish their invocation and are reaped as stale
        afterwards. Published versions are immutable: an update of $LATEST retires $LATEST's
        instances alone, and each version keeps its own."""
        with self._lock:
            victims = [i for i in self._instances.values() if i.function.name == function_name
                       and (version is None or i.function.version == version)
                       and i.function.revision_id != keep_revision]
            self._retired.update(i.function.pool_key for i in victims)
            if version is None:
                for key in [k for k in self._current_revision if k[0] == function_name]:
                    del self._current_revision[key]
            else:
                self._current_revision[(function_name, version)] = keep_revision
        stopped = 0
        for inst in victims:
            if inst.try_reserve():
                self._stop(inst)
                stopped += 1
        return stopped

    def _stale(self, inst: Instance) -> bool:
        f = inst.function
        with self._lock:
            if f.pool_key in self._retired:
                return True
            key = (f.name, f.version)
            return key in self._current_revision and self._current_revision[key] != f.revision_id

    def shutdown(self) -> None:
        self._closed.set()
        with self._lock:
            items = list(self._instances.values())
        for inst in items:
            self._stop(inst)
        self.meter.close()
        self.sandboxes.close()
        self.backbones.close()
        shutil.rmtree(self._socket_dir, ignore_errors=True)

    # instances
    def _acquire(self, function: FunctionSpec) -> tuple[Instance, bool]:
        victim: Instance | None = None
        with self._lock:
            for inst in self._instances.values():
                if inst.function.pool_key == function.pool_key and inst.try_reserve():
                    return inst, False
            live = [i for i in self._instances.values() if i.alive]
            if len(live) >= self.config.max_instances:
                idle = sorted((i for i in live if i.state is InstanceState.IDLE), key=lambda i: i.last_used_ts)
                victim = next((i for i in idle if i.try_reserve()), None)
                if victim is None:
                    raise TooManyRequests(
                        f"Node is at its limit of {self.config.max_instances} instances, all busy",
                        reason="ConcurrentInvocationLimitExceeded")
            if victim is None and self.config.device.startswith("cuda"):
                victim = self._admit_gpu(live)
            inst = Instance(f"{function.name[:24]}-{uuid.uuid4().hex[:8]}", function)
            self._instances[inst.instance_id] = inst
        self.meter.instance_starting(inst.instance_id, inst.started_ts)
        if victim is not None:
            log.info("evicting idle instance %s to make room", victim.instance_id)
            self._stop(victim)
        try:
            self._start(inst)
        except BaseException as exc:
            log.exception("could not start instance for %s", function.name)
            inst.init_failed(error_payload("Runtime.StartError", f"could not start the sandbox: {exc}"),
                             "Runtime.StartError")
            self._forget(inst)
        return inst, True

    def _admit_gpu(self, live: list[Instance]) -> Instance | None:
        """Refuse a cold start that would not fit in GPU memory (instead of an OOM crash
        inside it), evicting the least recently used idle instance if that makes room.
        Caller holds ``_lock``."""
        import torch

        free_b, _total = torch.cuda.mem_get_info(torch.device(self.config.device))
        need_b = self.config.instance_gpu_mb << 20
        starting = sum(1 for i in live if i.state is InstanceState.STARTING)
        if free_b - starting * need_b >= need_b:
            return None
        idle = sorted((i for i in live if i.state is InstanceState.IDLE), key=lambda i: i.last_used_ts)
        victim = next((i for i in idle if i.try_reserve()), None)
        if victim is None:
            raise TooManyRequests(
                f"Not enough GPU memory on {self.config.device} for another instance: "
                f"{free_b / 2**30:.1f} GiB free, {starting} instance(s) starting, each may need "
                f"{need_b / 2**30:.1f} GiB (--instance-gpu-mb); all {len(live)} instances are busy",
                reason="InsufficientGpuMemory")
        return victim

    def _start(self, inst: Instance) -> None:
        function = inst.function
        backbone = self.backbones.acquire(function.base_model_path)
        self._meter_backbones()
        attachment = backbone.attach(self._socket_dir, inst.instance_id)
        socket_path = self._socket_dir / f"{inst.instance_id}.sock"
        api = RuntimeApiServer(socket_path, inst).start()
        with self._lock:
            self._apis[inst.instance_id] = api
        env = self._runtime_env(inst, socket_path)
        env.update(attachment.env)
        spec = SandboxSpec(
            instance_id=inst.instance_id, function_name=function.name, version=function.version,
            argv=(self.config.python, "-m", "slfaas.functions"), env=env, code_dir=function.code_dir,
            runtime_socket=socket_path, memory_mb=function.memory_mb, inherit_fds=attachment.inherit_fds,
            labels={"slfaas.node": self.node_id, "slfaas.function": function.name,
                    "slfaas.version": function.version, "slfaas.instance": inst.instance_id},
        )
        inst.sandbox = self.sandboxes.start(spec, self._log_sink(inst))
        log.info("started instance %s of %s (pid %s)", inst.instance_id, function.name, inst.sandbox.pid)
        threading.Thread(target=self._watch, args=(inst,), daemon=True, name=f"watch-{inst.instance_id}").start()

    def _log_sink(self, inst: Instance) -> Callable[[str], None]:
        """An instance's output into its function's log. The runtime's sync marker (written
        before each response) is not logged: it tells the instance its output is all in."""
        name, iid = inst.function.name, inst.instance_id

        def sink(line: str) -> None:
            head, marker, request_id = line.partition(LOG_SYNC_MARKER)
            if head or not marker:
                self.logs.append(name, iid, head)
            if marker:
                inst.log_synced(request_id.strip())
        return sink

    def _runtime_env(self, inst: Instance, socket_path: Path) -> dict[str, str]:
        f = inst.function
        env = node_environ()
        env.update(f.environment)
        env.update(runtime_fixed_env())
        env.update({
            "AWS_LAMBDA_FUNCTION_NAME": f.name,
            "AWS_LAMBDA_FUNCTION_VERSION": f.version,
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(f.memory_mb),
            "_HANDLER": f.handler,
            "SLFAAS_RUNTIME_SOCKET": str(socket_path),
            "SLFAAS_INSTANCE_ID": inst.instance_id,
            "SLFAAS_BASE_MODEL_DIR": str(f.base_model_path),
            "SLFAAS_CODE_DIR": str(f.code_dir),
            "SLFAAS_DEVICE": self.config.device,
            "SLFAAS_NODE_PID": str(os.getpid()),
        })
        return env

    def _watch(self, inst: Instance) -> None:
        assert inst.sandbox is not None
        code = inst.sandbox.wait()
        was_stopping = inst.state in (InstanceState.STOPPING, InstanceState.STOPPED)
        inst.on_exit(code)
        if not was_stopping:
            log.warning("instance %s of %s exited unexpectedly (%s)", inst.instance_id, inst.function.name, code)
            self.logs.append(inst.function.name, inst.instance_id, f"instance exited unexpectedly (status {code})")
        self._forget(inst)

    def _stop(self, inst: Instance) -> None:
        inst.begin_stop()
        if inst.sandbox is not None:
            inst.sandbox.stop()
            inst.sandbox.wait(5)
        self._forget(inst)

    def _forget(self, inst: Instance) -> None:
        inst.mark_stopped()
        self.meter.instance_gone(inst.instance_id, time.time())
        with self._lock:
            self._instances.pop(inst.instance_id, None)
            api = self._apis.pop(inst.instance_id, None)
        if api is not None:
            api.close()
        (self._socket_dir / f"{inst.instance_id}.ipc").unlink(missing_ok=True)

    def _reap_loop(self) -> None:
        interval_s = max(0.05, min(1.0, self.config.keep_alive_s / 4))
        while not self._closed.wait(interval_s):
            now = time.time()
            with self._lock:
                items = list(self._instances.values())
            for inst in items:
                if inst.state is InstanceState.IDLE and now - inst.last_used_ts > self.config.keep_alive_s:
                    if inst.try_reserve():
                        log.info("keep-alive expired: stopping %s", inst.instance_id)
                        self._stop(inst)

    # results
    def _result(self, request: InvocationRequest, inst: Instance, outcome: Outcome, cold: bool,
                submitted_ts: float, dispatch_ts: float, usage: UsageRecord | None = None) -> InvocationResult:
        end_ts = time.time()
        queue_ms = ((outcome.delivered_ts or dispatch_ts) - dispatch_ts) * 1000
        return InvocationResult(
            request_id=request.request_id, payload=outcome.payload,
            function_error=None if outcome.error_type is None else "Unhandled",
            error_type=outcome.error_type or "", instance_id=inst.instance_id, cold_start=cold,
            start_ts=submitted_ts, end_ts=end_ts,
            init_duration_ms=inst.init_duration_ms if cold else None,
            queue_ms=queue_ms, duration_ms=(end_ts - dispatch_ts) * 1000, metrics=outcome.metrics, usage=usage)

    def _report(self, request: InvocationRequest, inst: Instance, outcome: Outcome, cold: bool,
                dispatch_ts: float, usage: UsageRecord | None = None) -> None:
        name = request.function.name
        duration_ms = (time.time() - dispatch_ts) * 1000
        if outcome.error_type is not None:
            try:
                message = json.loads(outcome.payload).get("errorMessage", "")
            except (ValueError, AttributeError):
                message = ""
            self.logs.append(name, inst.instance_id,
                             f"ERROR RequestId: {request.request_id} {outcome.error_type}: {message}")
        self.logs.append(name, inst.instance_id, f"END RequestId: {request.request_id}")
        init = f"\tInit Duration: {inst.init_duration_ms:.2f} ms" if cold and inst.init_duration_ms else ""
        self.logs.append(name, inst.instance_id,
                         f"REPORT RequestId: {request.request_id}\tDuration: {duration_ms:.2f} ms\t"
                         f"Billed Duration: {int(duration_ms) + 1} ms\tMemory Size: {request.function.memory_mb} MB\t"
                         f"Max Memory Used: {_max_rss_mb(inst)} MB{init}{_billing_fields(usage)}")


@dataclass
class _Tracked:
    """A request the node is working on (mutated under the agent's lock)."""

    instance: Instance
    dispatched: bool = False
    cancelled: bool = False


class ResponseStream:
    """The chunks of one streaming invocation, in order, as the runtime posts them; iterating
    ends when the invocation does, and ``result`` (or ``error``) tells how it ended."""

    _END = object()

    def __init__(self) -> None:
        self._chunks: queue.Queue = queue.Queue()
        self.result: InvocationResult | None = None
        self.error: BaseException | None = None

    def _run(self, invoke: Callable[[], InvocationResult]) -> None:
        try:
            self.result = invoke()
        except BaseException as exc:  # handed to the reader, who re-raises it
            self.error = exc
        finally:
            self._chunks.put(self._END)

    def __iter__(self) -> Iterator[bytes]:
        while True:
            item = self._chunks.get()
            if item is self._END:
                return
            yield item


def _billing_fields(usage: UsageRecord | None) -> str:
    """slfaas's additions to Lambda's REPORT line: what billing charged this invocation."""
    if usage is None:
        return ""
    unit = "GPU" if usage.device.startswith("cuda") else "Device"
    return (f"\tBilled {unit} Seconds: {usage.billed_device_s:.6f}\tBatch Size: {usage.batch_size}\t"
            f"Preload Tier: {usage.preload_tier}\tCost: ${usage.cost_usd:.10f}")


def _gpu_name(device: str) -> str | None:
    if not device.startswith("cuda"):
        return None
    try:
        import torch
        return str(torch.cuda.get_device_name(torch.device(device)))
    except Exception:  # the price sheet's lookup then says which type it does not know
        return None


def _max_rss_mb(inst: Instance) -> int:
    pid = inst.sandbox.pid if inst.sandbox else None
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) // 1024
    except (OSError, ValueError, TypeError):
        pass
    return 0
