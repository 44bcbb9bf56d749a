"""The node facade: ``NodeApi`` over the services that do the work (dispatch, lifecycle,
resources, reporting). It wires them and holds no logic of its own beyond that wiring."""
from __future__ import annotations

import logging
import threading
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from slfaas.gpu_node.config import NodeConfig
from slfaas.gpu_node.dispatch import Placed
from slfaas.gpu_node.events import (BackbonesChanged, EventBus, FunctionPrepared, IntegrityChecked,
                                    InvocationSubmitted)
from slfaas.gpu_node.introspect import describe_node, summarize_node
from slfaas.gpu_node.invocation import InvocationRunner, NotDelivered
from slfaas.gpu_node.lifecycle.idle_history import IdleHistories
from slfaas.gpu_node.lifecycle.launcher import Launcher
from slfaas.gpu_node.lifecycle.reaper import KeepAliveReaper
from slfaas.gpu_node.lifecycle.table import InstanceTable
from slfaas.gpu_node.logs import FunctionLogs
from slfaas.gpu_node.policy.scheduling import Scheduler
from slfaas.gpu_node.prestart import Prestarter
from slfaas.gpu_node.provisioning import Provisioner
from slfaas.gpu_node.schedulers import build_dispatcher
from slfaas.gpu_node.reporting import Reporter
from slfaas.gpu_node.resources.adapters import AdapterTiers
from slfaas.gpu_node.resources import private_backbone
from slfaas.gpu_node.resources.backbone import BackboneOwner
from slfaas.gpu_node.resources.integrity import IntegrityMonitor
from slfaas.gpu_node.resources.memory import MemoryLedger
from slfaas.gpu_node.sandboxes.base import SandboxFactory
from slfaas.gpu_node.streaming import ResponseStream
from slfaas.gpu_node.types import (BackboneInfo, FunctionSpec, IntegrityEvent, InvocationRequest, InvocationResult,
                                   LogChunk, NodeInfo, NodeSummary)

if TYPE_CHECKING:
    from slfaas.gpu_node.preloader import Preloader

log = logging.getLogger(__name__)

class Node:
    def __init__(self, config: NodeConfig, sandboxes: SandboxFactory, backbones: BackboneOwner | None = None,
                 bus: EventBus | None = None, scheduler: Scheduler | None = None, ledger: MemoryLedger | None = None,
                 node_id: str | None = None, tiers: AdapterTiers | None = None):
        self.config = config
        self.node_id = node_id or uuid.uuid4().hex[:12]
        self.bus = bus or EventBus()
        self.sandboxes = sandboxes
        self.backbones = backbones or BackboneOwner(private_backbone.owner_device(config.backbone, config.device))
        self.backbones.on_change = self._backbones_changed
        self.ledger = ledger or MemoryLedger(config.instance_gpu_mb)
        self._logs = FunctionLogs(Path(config.data_dir) / "logs")
        self.tiers = tiers or AdapterTiers(0)
        self.preloader: "Preloader | None" = None   # the builder's: sizes pools and tiers
        self.table = InstanceTable()
        self.launcher = Launcher(self.node_id, config.device, config.python, sandboxes, self.backbones, self.table,
                                 self._logs, self.bus.publish, on_gone=self.ledger.forget, tiers=self.tiers,
                                 backbone_mode=config.backbone, device_bounds_mb=config.device_bounds_mb)
        self.dispatcher = build_dispatcher(config, scheduler, self.table, self.launcher.stop, self.ledger,
                                           lambda: self.preloader)
        self.runner = InvocationRunner(config.init_timeout_s, self.table, self.launcher, self.dispatcher,
                                       Reporter(self._logs), self.ledger, self.bus)
        self.integrity = IntegrityMonitor(self.backbones, self._stop_borrowers, self._integrity_checked,
                                          config.verify_interval_s)
        self.prestarter = Prestarter(self.dispatcher, self.launcher, self.bus, config.init_timeout_s)
        self.histories = IdleHistories(self.table, config.keep_alive_default(), config.keep_alive_histogram())
        self.bus.subscribe(self.histories.on_event)
        self.reaper = KeepAliveReaper(self.table, self.launcher, self.histories, config.max_instances,
                                      prewarm=lambda spec: self.prestarter.start(spec, False, may_evict=False))
        self.provisioner = Provisioner(self.table, self.launcher, self.prestarter, self.bus)
        self.on_shutdown: list[Callable[[], None]] = []

    # NodeApi
    def prepare(self, function: FunctionSpec) -> BackboneInfo:
        info = private_backbone.prepare(self.config.backbone, self.backbones, self.ledger, function.base_model_path)
        self.bus.publish(FunctionPrepared(time.time(), function.name, function.version, str(function.base_model_path),
                                          str(function.code_dir)))
        return info

    def invoke(self, request: InvocationRequest) -> InvocationResult:
        submitted_ts = self._submitted(request)
        return self._run(request, submitted_ts, None)

    def invoke_stream(self, request: InvocationRequest) -> ResponseStream:
        submitted_ts = self._submitted(request)
        placed = self.dispatcher.submit(request)   # capacity errors raise here, before the stream starts
        stream = ResponseStream()
        threading.Thread(target=stream.run, daemon=True, name=f"stream-{request.request_id[:8]}",
                         args=(lambda: self._run(request, submitted_ts, stream.put, placed),)).start()
        return stream

    def _submitted(self, request: InvocationRequest) -> float:
        now = time.time()
        f = request.function
        self.bus.publish(InvocationSubmitted(now, request.request_id, f.name, f.version, str(f.base_model_path),
                                             str(f.code_dir)))
        return now

    def _run(self, request: InvocationRequest, submitted_ts: float, on_chunk: Callable[[bytes], None] | None,
             placed: Placed | None = None) -> InvocationResult:
        """Place and run; a warm instance that died before the runtime received the request
        (so nothing ran) is replaced once, by a fresh placement."""
        try:
            return self.runner.run(placed or self.dispatcher.submit(request), request, submitted_ts, on_chunk,
                                   redeliverable=True)
        except NotDelivered as exc:
            log.info("instance %s died before receiving %s; placing it again", exc, request.request_id)
        return self.runner.run(self.dispatcher.submit(request), request, submitted_ts, on_chunk, redeliverable=False)

    def cancel(self, request_id: str) -> bool:
        """Not placed yet: dropped. Placed: never handed over, or (handed over) its instance is
        stopped. False while the node does not know the request (ask again) or once it ended."""
        if self.dispatcher.abort(request_id):
            return True
        inst = self.table.holding(request_id)
        if inst is None:
            return False
        if not self.runner.gate.cancel(request_id, inst):
            return False   # it had already ended
        log.info("request %s cancelled: its caller went away", request_id)
        self.write_log(inst.function.name, inst.instance_id, f"CANCELLED RequestId: {request_id}: the caller went away")
        return True

    def provision(self, function: FunctionSpec, count: int) -> None:
        self.provisioner.provision(function, count)

    def retire(self, function_name: str, keep_revision: str | None = None, version: str | None = None) -> int:
        """Idle instances stop now; busy ones finish their invocation and stop afterwards (stale).
        Published versions are immutable: an update of $LATEST retires $LATEST's instances alone."""
        self.provisioner.forget(function_name, keep_revision, version)
        self.histories.forget(function_name, keep_revision, version)
        stopped = 0
        for inst in self.table.retire(function_name, keep_revision, version):
            if inst.claim_idle():
                self.launcher.stop(inst)
                stopped += 1
        return stopped

    def describe(self, checksums: bool = False) -> NodeInfo:
        return describe_node(self, checksums)

    def summary(self) -> NodeSummary:
        """What a NodeSet's placement needs of this node: a few numbers, no instance details."""
        return summarize_node(self)

    def logs(self, function_name: str, max_bytes: int = 64 * 1024, offset: int | None = None,
             since_ts: float | None = None) -> LogChunk:
        if offset is None and since_ts is None:
            return self._logs.read_tail(function_name, max_bytes)
        return self._logs.read(function_name, offset=offset, since_ts=since_ts, max_bytes=max_bytes)

    def write_log(self, function_name: str, source: str, line: str) -> None:
        self._logs.append(function_name, source, line)

    def delete_logs(self, function_name: str) -> None:
        self._logs.remove(function_name)

    def queued(self) -> dict[str, int]:
        """Requests waiting per function: for placement, or in an instance not yet taken by
        its runtime (metrics; not part of ``NodeApi``)."""
        waiting = self.dispatcher.waiting_by_function()
        for inst in self.table.all():
            n = inst.undelivered()
            if n:
                waiting[inst.function.name] = waiting.get(inst.function.name, 0) + n
        return waiting

    def verify(self) -> tuple[IntegrityEvent, ...]:
        return self.integrity.verify()

    def shutdown(self) -> None:
        self.dispatcher.close()
        if self.preloader is not None:
            self.preloader.close()
        self.integrity.close()
        self.provisioner.close()
        self.reaper.close()
        for inst in self.table.all():
            self.launcher.stop(inst)
        for hook in self.on_shutdown:
            hook()
        self.sandboxes.close()
        self.tiers.close()
        self.backbones.close()
        self.launcher.close()

    # wiring
    def _backbones_changed(self, loaded: list[BackboneInfo]) -> None:
        largest = max(loaded, key=lambda b: b.size_bytes, default=None)
        self.bus.publish(BackbonesChanged(time.time(), len(loaded), largest.size_bytes if largest else 0,
                                          largest.load_s if largest else 0.0))

    def _integrity_checked(self, event: IntegrityEvent) -> None:
        self.bus.publish(IntegrityChecked(event.ts, event))

    def _stop_borrowers(self, model_path: Path, reason: str) -> tuple[str, ...]:
        return self.launcher.kill(self.table.borrowers(model_path), reason)
