"""Runs one placed request on its instance: the cold start it may need, the hand-over through
the Runtime API, the events, the log lines and the result; then gives the place back."""
from __future__ import annotations

import logging
import time
from typing import Callable, Mapping

from slfaas.gpu_node import events as ev
from slfaas.gpu_node.dispatch import Dispatcher, Placed
from slfaas.gpu_node.lifecycle.instance import Instance, InstanceState, Outcome, error_payload
from slfaas.gpu_node.lifecycle.launcher import Launcher
from slfaas.gpu_node.lifecycle.table import InstanceTable
from slfaas.gpu_node.reporting import Reporter
from slfaas.gpu_node.resources.memory import MemoryLedger
from slfaas.gpu_node.types import InvocationRequest, InvocationResult

log = logging.getLogger(__name__)


def batch_size(metrics: Mapping[str, object] | None, capacity: int) -> int:
    """The batch the runtime says the invocation ran in, within what the node let the
    instance hold (a runtime cannot claim a larger one to lower its share's scrutiny)."""
    value = (metrics or {}).get("batch_size")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        return 1
    return int(min(max(value, 1), capacity))


class NotDelivered(Exception):
    """A warm instance died before the runtime received the request: nothing ran, so the
    request may be placed again (on a fresh instance)."""


class InvocationRunner:
    def __init__(self, init_timeout_s: float, table: InstanceTable, launcher: Launcher, dispatcher: Dispatcher,
                 reporter: Reporter, ledger: MemoryLedger, bus: ev.EventBus):
        self._init_timeout_s = init_timeout_s
        self._table = table
        self._launcher = launcher
        self._dispatcher = dispatcher
        self._reporter = reporter
        self._ledger = ledger
        self._bus = bus

    def run(self, placed: Placed, request: InvocationRequest, submitted_ts: float,
            on_chunk: Callable[[bytes], None] | None = None, redeliverable: bool = False) -> InvocationResult:
        """``redeliverable``: raise ``NotDelivered`` instead of failing the request when its warm
        instance turns out dead before the runtime took the request."""
        inst, cold = placed.instance, placed.cold
        if cold:
            for victim in placed.evict:
                log.info("evicting idle instance %s to make room", victim.instance_id)
                self._launcher.stop(victim)
            self._launcher.start(inst)
        ok = False
        try:
            if cold:
                ready = inst.wait_ready(self._init_timeout_s)
                now = time.time()
                self._bus.publish(ev.InstanceReady(now, inst.instance_id, now - inst.started_ts))
                if not ready:
                    outcome = inst.init_error or Outcome(
                        error_payload("Runtime.InitTimeout", f"Init did not finish within {self._init_timeout_s:.0f} s"),
                        "Runtime.InitTimeout")
                    inst.fail_and_kill()
                    return self._finish(request, inst, outcome, cold, submitted_ts, now)
            dispatch_ts = time.time()
            self._reporter.start(request, inst)
            self._bus.publish(ev.InvocationStarted(dispatch_ts, request.request_id, inst.instance_id))
            outcome, _call = inst.run(request, cold, dispatch_ts, sink=on_chunk)
            if redeliverable and not cold and outcome.error_type == "Runtime.ExitError" and outcome.delivered_ts is None:
                raise NotDelivered(inst.instance_id)
            ok = outcome.error_type is None
            return self._finish(request, inst, outcome, cold, submitted_ts, dispatch_ts)
        finally:
            self._bus.publish(ev.InvocationAborted(time.time(), request.request_id))   # no-op once it ended
            inst.release(request.request_id)
            if inst.state is InstanceState.IDLE:
                self._bus.publish(ev.InstanceIdle(time.time(), inst.instance_id, inst.function.name))
            if cold and inst.sandbox is not None:
                self._ledger.observe(inst.instance_id, inst.sandbox.pid)   # what one instance costs, served
            self._dispatcher.finished(request.request_id, inst.instance_id, ok)
            if self._table.stale(inst) and inst.claim_idle():
                self._launcher.stop(inst)

    def _finish(self, request: InvocationRequest, inst: Instance, outcome: Outcome, cold: bool, submitted_ts: float,
                dispatch_ts: float) -> InvocationResult:
        f = request.function
        answers = self._bus.publish(ev.InvocationEnded(
            time.time(), request.request_id, f.name, f.version, f.memory_mb, inst.instance_id, cold,
            bool(inst.sandbox is not None and inst.sandbox.preloaded), submitted_ts, dispatch_ts,
            outcome.error_type, outcome.payload, outcome.metrics, dict(inst.init_facts),
            batch_size(outcome.metrics, inst.capacity), outcome.delivered_ts))
        usage = answers[0] if answers else None   # the meter's usage record (billing is a subscriber)
        self._reporter.end(request, inst, outcome, cold, dispatch_ts, usage)
        return self._reporter.result(request, inst, outcome, cold, submitted_ts, dispatch_ts, usage)
