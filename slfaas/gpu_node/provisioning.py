"""Provisioned concurrency on the node: per function version, a target number of instances
started ahead of requests and held (never reaped by keep-alive, never evicted), adopted from
the version's live instances first, re-started when one dies, released when the target drops.

Reconciled on every change, when a held instance goes, and on a short period; a start that
fails (no room, or an init error) is retried with a growing delay, and said in ``infos``.
Instances are matched by pool key: for a function in shared execution the held instance is
its backbone's shared runtime (one held runtime serves every target on that backbone).
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable

from slfaas.errors import TooManyRequests
from slfaas.gpu_node import events as ev
from slfaas.gpu_node.lifecycle.instance import Instance, InstanceState
from slfaas.gpu_node.lifecycle.launcher import Launcher
from slfaas.gpu_node.lifecycle.table import InstanceTable
from slfaas.gpu_node.prestart import Prestarter
from slfaas.gpu_node.types import FunctionSpec, ProvisionedInfo

log = logging.getLogger(__name__)

MAX_RETRY_DELAY_S = 30.0
NO_ROOM_RETRY_S = 1.0


@dataclass
class _Target:
    spec: FunctionSpec
    count: int
    failures: int = 0              # consecutive failed inits
    failure: str | None = None     # why the last start failed
    retry_at_s: float = 0.0


class Provisioner:
    def __init__(self, table: InstanceTable, launcher: Launcher, prestarter: Prestarter, bus: ev.EventBus,
                 clock: Callable[[], float] = time.time, interval_s: float = 1.0):
        self._table = table
        self._launcher = launcher
        self._prestarter = prestarter
        self._bus = bus
        self._clock = clock
        self._interval_s = interval_s
        self._lock = threading.Lock()          # the targets
        self._reconciling = threading.Lock()   # one reconciliation at a time
        self._targets: dict[tuple[str, str], _Target] = {}
        self._wake = threading.Event()
        self._closed = threading.Event()
        bus.subscribe(self._on_event)
        threading.Thread(target=self._loop, daemon=True, name="provisioner").start()

    def provision(self, function: FunctionSpec, count: int) -> None:
        """Hold ``count`` instances of ``function`` (its version); 0 releases them."""
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ValueError(f"a provisioned count must be a whole number >= 0, got {count!r}")
        key = (function.name, function.version)
        with self._lock:
            old = self._targets.get(key)
            if count == 0:
                self._targets.pop(key, None)
            elif old is not None and old.spec.revision_id == function.revision_id:
                old.count, old.spec = count, function
            else:
                self._targets[key] = _Target(function, count)
        self.reconcile()

    def forget(self, function_name: str, keep_revision: str | None, version: str | None) -> None:
        """The node retired these revisions: their targets go (their instances are stale)."""
        with self._lock:
            for key in [k for k, t in self._targets.items() if k[0] == function_name
                        and (version is None or k[1] == version) and t.spec.revision_id != keep_revision]:
                del self._targets[key]

    def infos(self) -> tuple[ProvisionedInfo, ...]:
        with self._lock:
            targets = sorted(self._targets.items())
        insts = [i for i in self._table.all() if i.provisioned]
        out = []
        for (name, version), t in targets:
            mine = [i for i in insts if i.function.pool_key == t.spec.pool_key]
            ready = sum(1 for i in mine if i.state in (InstanceState.IDLE, InstanceState.BUSY))
            starting = sum(1 for i in mine if i.state is InstanceState.STARTING)
            # a failure explains a target not met: once met it is past (an instance can be ready
            # a moment before its init's callback clears the failure)
            out.append(ProvisionedInfo(name, version, t.spec.revision_id, t.count, ready, starting,
                                       t.failure if ready < t.count else None, t.failures))
        return tuple(out)

    def reconcile(self) -> None:
        with self._reconciling:
            with self._lock:
                targets = {k: (t.spec, t.count, t.retry_at_s) for k, t in self._targets.items()}
            live = [i for i in self._table.all() if i.alive and not self._table.stale(i)]
            wanted = {spec.pool_key for spec, _, _ in targets.values()}
            for inst in live:   # held for a target that is gone or now holds another revision
                if inst.provisioned and inst.function.pool_key not in wanted:
                    self._release(inst)
            for key, (spec, count, retry_at_s) in targets.items():
                self._hold(key, spec, count, retry_at_s, [i for i in live if i.function.pool_key == spec.pool_key])

    def _hold(self, key: tuple[str, str], spec: FunctionSpec, count: int, retry_at_s: float,
              mine: list[Instance]) -> None:
        held = [i for i in mine if i.provisioned]
        if len(held) > count:   # fewer wanted: release idle ones first
            for inst in sorted(held, key=lambda i: i.state is not InstanceState.IDLE)[:len(held) - count]:
                self._release(inst)
            return
        for inst in [i for i in mine if not i.provisioned][:count - len(held)]:   # adopt live ones
            inst.provisioned = True
            held.append(inst)
            if inst.state is InstanceState.IDLE:
                self._bus.publish(ev.InstanceIdle(self._clock(), inst.instance_id, inst.function.name, True))
        if len(held) >= count or self._clock() < retry_at_s:
            return
        for _ in range(count - len(held)):
            try:
                inst = self._prestarter.start(spec, provisioned=True, may_evict=True,
                                              on_done=lambda i, ok, error: self._init_done(key, spec.revision_id,
                                                                                           ok, error))
            except TooManyRequests as exc:
                self._failed(key, spec.revision_id, f"no room on the node: {exc}", NO_ROOM_RETRY_S, count_it=False)
                return
            log.info("provisioned concurrency: starting %s for %s:%s", inst.instance_id, spec.name, spec.version)

    def _release(self, inst: Instance) -> None:
        inst.provisioned = False
        if inst.claim_idle():
            log.info("provisioned concurrency released: stopping %s", inst.instance_id)
            self._launcher.stop(inst)

    def _init_done(self, key: tuple[str, str], revision: str, ok: bool, error: str) -> None:
        if ok:
            with self._lock:
                t = self._targets.get(key)
                if t is not None and t.spec.revision_id == revision:
                    t.failures, t.failure = 0, None
        else:
            with self._lock:
                t = self._targets.get(key)
                failures = (t.failures + 1) if t is not None else 1
            self._failed(key, revision, f"an instance failed its init: {error}",
                         min(MAX_RETRY_DELAY_S, 0.5 * 2 ** failures), count_it=True)
        self._wake.set()

    def _failed(self, key: tuple[str, str], revision: str, message: str, delay_s: float, count_it: bool) -> None:
        with self._lock:
            t = self._targets.get(key)
            if t is None or t.spec.revision_id != revision:
                return
            t.failure, t.retry_at_s = message, self._clock() + delay_s
            t.failures += 1 if count_it else 0

    def _on_event(self, event: ev.NodeEvent) -> None:
        if isinstance(event, ev.InstanceGone):
            self._wake.set()   # a held one may have died: start its replacement now

    def _loop(self) -> None:
        while not self._closed.is_set():
            self._wake.wait(self._interval_s)
            self._wake.clear()
            if self._closed.is_set():
                return
            try:
                self.reconcile()
            except Exception:
                log.exception("provisioned concurrency: reconciling failed")

    def close(self) -> None:
        self._closed.set()
        self._wake.set()
