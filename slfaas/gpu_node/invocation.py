"""Runs one placed request on its instance: the cold start it may need, the hand-over through
the Runtime API, the events, the log lines and the result; then gives the place back."""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Mapping

from slfaas.gpu_node import events as ev
from slfaas.gpu_node.dispatch import Dispatcher, Placed
from slfaas.gpu_node.lifecycle.instance import Instance, InstanceState, Outcome, error_payload
from slfaas.gpu_node.lifecycle.launcher import Launcher
from slfaas.gpu_node.lifecycle.table import InstanceTable
from slfaas.gpu_node.policy.scheduling import Finished
from slfaas.gpu_node.reporting import Reporter
from slfaas.gpu_node.resources.memory import MemoryLedger
from slfaas.gpu_node.types import InvocationRequest, InvocationResult

log = logging.getLogger(__name__)


# How long an invocation's END/REPORT waits at most for the runtime's output to reach the log
# (a runtime that says "log_sync" in its init report writes the marker before each response).
LOG_SYNC_TIMEOUT_S = 5.0


class DispatchGate:
    """Cancellation around the hand-over: a request cancelled before it reaches its runtime is
    never handed over (the instance it waited for serves others); once handed over, cancelling
    it stops its instance, so the function does not keep the device busy for nobody. A request
    whose call already ended is not cancelled (its instance, healthy, is left alone)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._dispatched: set[str] = set()
        self._cancelled: set[str] = set()

    def begin(self, request_id: str) -> bool:
        with self._lock:
            if request_id in self._cancelled:
                return False
            self._dispatched.add(request_id)
            return True

    def cancelled(self, request_id: str) -> bool:
        with self._lock:
            return request_id in self._cancelled

    def end(self, request_id: str) -> None:
        with self._lock:
            self._dispatched.discard(request_id)
            self._cancelled.discard(request_id)

    def cancel(self, request_id: str, inst: Instance) -> bool:
        """True: the request will not run on (or was stopped in) ``inst``; False: it had
        already ended."""
        with self._lock:
            running = request_id in self._dispatched
            if not running:
                self._cancelled.add(request_id)
                return True
        stopped = inst.cancel(request_id, cancelled_outcome())
        if stopped is None:   # handed over but its call not registered yet: stop the instance
            with self._lock:
                self._cancelled.add(request_id)   # so it is not placed again once found undelivered
            inst.fail_and_kill()
            return True
        return stopped


def cancelled_outcome() -> Outcome:
    return Outcome(error_payload("Runtime.Cancelled", "The caller went away; the invocation was cancelled"),
                   "Runtime.Cancelled")


def sources(init_facts: dict, cold: bool, preloaded: bool) -> tuple[str, str]:
    """Where a cold start's runtime and adapter came from, as its runtime reported them."""
    if not cold:
        return "", ""
    if init_facts.get("runtime_source") == "prewarmed":
        return "prewarmed", str(init_facts.get("adapter_source") or "disk")
    return ("pool" if preloaded else "cold"), "disk"


def batch_size(metrics: Mapping[str, object] | None, capacity: int) -> int:
    """The batch the runtime says the invocation ran in, within what the node let the
    instance hold (a runtime cannot claim a larger one to lower its share's scrutiny)."""
    value = (metrics or {}).get("batch_size")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        return 1
    return int(min(max(value, 1), capacity))


def _metric(metrics: Mapping[str, object] | None, key: str) -> float | None:
    value = (metrics or {}).get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1e9:
        return None
    return float(value)


def measured(request_id: str, inst: Instance, outcome: Outcome | None, cold: bool, submitted_ts: float) -> Finished:
    """What the scheduler learns from a request's end: its batch, prompt length and time to
    first token as the runtime reported them, its wait as the node saw it, the init it caused."""
    ok = outcome is not None and outcome.error_type is None
    metrics = outcome.metrics if outcome is not None else None
    delivered = outcome.delivered_ts if outcome is not None else None
    prompt = _metric(metrics, "first_prompt_tokens")
    if prompt is None:
        prompt = _metric(metrics, "prompt_tokens")   # a stream's trailer
    return Finished(request_id, inst.instance_id, ok, batch_size(metrics, inst.capacity),
                    int(prompt) if prompt is not None else None, _metric(metrics, "ttft_ms"),
                    (delivered - submitted_ts) * 1000 if delivered is not None else None,
                    inst.init_duration_ms if cold else None)


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
        self.gate = DispatchGate()

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
        outcome: Outcome | None = None
        try:
            if cold:
                ready = inst.wait_ready(self._init_timeout_s)
                now = time.time()
                self._bus.publish(ev.InstanceReady(now, inst.instance_id, now - inst.started_ts))
                self._dispatcher.poke()   # requests waiting for this instance may join it now
                if not ready:
                    outcome = inst.init_error or Outcome(
                        error_payload("Runtime.InitTimeout", f"Init did not finish within {self._init_timeout_s:.0f} s"),
                        "Runtime.InitTimeout")
                    inst.fail_and_kill()
                    return self._finish(request, inst, outcome, cold, submitted_ts, now)
            dispatch_ts = time.time()
            if not self.gate.begin(request.request_id):   # cancelled while it waited
                return self._finish(request, inst, cancelled_outcome(), cold, submitted_ts, dispatch_ts, report=False)
            self._reporter.start(request, inst)
            self._bus.publish(ev.InvocationStarted(dispatch_ts, request.request_id, inst.instance_id))
            outcome, _call = inst.run(request, cold, dispatch_ts, sink=on_chunk)
            if outcome.error_type == "Runtime.ExitError" and outcome.delivered_ts is None:
                if self.gate.cancelled(request.request_id):   # its caller left, which stopped the instance
                    return self._finish(request, inst, cancelled_outcome(), cold, submitted_ts, dispatch_ts)
                if redeliverable and not cold:
                    raise NotDelivered(inst.instance_id)
            if outcome.from_runtime and inst.init_facts.get("log_sync"):
                # its output reaches the log through a pipe: wait until all of it has
                inst.wait_log_synced(request.request_id, LOG_SYNC_TIMEOUT_S)
            return self._finish(request, inst, outcome, cold, submitted_ts, dispatch_ts)
        finally:
            # released first: a cancel from here on finds the request nowhere (not "not yet begun")
            try:
                inst.release(request.request_id)
                self.gate.end(request.request_id)
            finally:   # whatever happens, it stops counting as running (device activity, metrics)
                self._bus.publish(ev.InvocationAborted(time.time(), request.request_id))   # no-op once it ended
            if inst.state is InstanceState.IDLE:
                self._bus.publish(ev.InstanceIdle(time.time(), inst.instance_id, inst.function.name,
                                                  inst.provisioned))
            if cold and inst.sandbox is not None:
                self._measure(inst, inst.sandbox.pid)   # what one instance costs, served
            self._dispatcher.finished(measured(request.request_id, inst, outcome, cold, submitted_ts))
            if self._table.stale(inst) and inst.claim_idle():
                self._launcher.stop(inst)

    def _measure(self, inst: Instance, pid: int | None) -> None:
        """What one instance costs in device memory, once served (admission's estimate where
        the device has memory but the process cannot be measured)."""
        mb = self._ledger.observe(inst.instance_id, pid)
        observed = mb is not None
        if mb is None and self._ledger.tracks_device:
            mb = self._ledger.instance_estimate_mb()
        if mb is not None:
            self._bus.publish(ev.InstanceMeasured(time.time(), inst.instance_id, mb, observed))

    def _finish(self, request: InvocationRequest, inst: Instance, outcome: Outcome, cold: bool, submitted_ts: float,
                dispatch_ts: float, report: bool = True) -> InvocationResult:
        f = request.function
        preloaded = bool(inst.sandbox is not None and inst.sandbox.preloaded)
        runtime_source, adapter_source = sources(inst.init_facts, cold, preloaded)
        answers = self._bus.publish(ev.InvocationEnded(
            time.time(), request.request_id, f.name, f.version, f.memory_mb, inst.instance_id, cold,
            preloaded, submitted_ts, dispatch_ts, outcome.error_type, outcome.payload, outcome.metrics,
            dict(inst.init_facts), batch_size(outcome.metrics, inst.capacity), outcome.delivered_ts,
            runtime_source=runtime_source, adapter_source=adapter_source))
        usage = answers[0] if answers else None   # the meter's usage record (billing is a subscriber)
        if report:
            self._reporter.end(request, inst, outcome, cold, dispatch_ts, usage)
        return self._reporter.result(request, inst, outcome, cold, submitted_ts, dispatch_ts, usage)
