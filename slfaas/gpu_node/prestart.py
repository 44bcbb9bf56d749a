"""Starts instances ahead of any request: pre-warmed by the keep-alive policy, or held for
provisioned concurrency. Room is found under the dispatcher's lock (the instance limit holds
for these as for requests); the sandbox starts and its init runs on a thread of its own, and
the events tell billing that no invocation pays for this init."""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from slfaas.gpu_node import events as ev
from slfaas.gpu_node.dispatch import Dispatcher
from slfaas.gpu_node.lifecycle.instance import Instance, InstanceState
from slfaas.gpu_node.lifecycle.launcher import Launcher
from slfaas.gpu_node.types import FunctionSpec

log = logging.getLogger(__name__)

# (instance, ok, error message): called once the instance's init has ended either way
InitDone = Callable[[Instance, bool, str], None]


class Prestarter:
    def __init__(self, dispatcher: Dispatcher, launcher: Launcher, bus: ev.EventBus, init_timeout_s: float):
        self._dispatcher = dispatcher
        self._launcher = launcher
        self._bus = bus
        self._init_timeout_s = init_timeout_s

    def start(self, function: FunctionSpec, provisioned: bool, may_evict: bool,
              on_done: InitDone | None = None) -> Instance:
        """Reserve room and start one instance (its init goes on in the background). Raises
        ``TooManyRequests`` when the node has no room (``may_evict``: idle instances of other
        functions may be stopped for it, never provisioned or busy ones)."""
        placed = self._dispatcher.start_ahead(function, may_evict)
        inst = placed.instance
        inst.provisioned = provisioned
        threading.Thread(target=self._run, args=(inst, placed.evict, on_done), daemon=True,
                         name=f"prestart-{inst.instance_id}").start()
        return inst

    def _run(self, inst: Instance, evict: tuple[Instance, ...], on_done: InitDone | None) -> None:
        for victim in evict:
            log.info("evicting idle instance %s for %s", victim.instance_id, inst.instance_id)
            self._launcher.stop(victim)
        if inst.state is not InstanceState.STARTING:   # stopped meanwhile (the node shutting down)
            self._launcher.forget(inst)
            return
        self._launcher.start(inst)
        ok = inst.wait_ready(self._init_timeout_s)
        now = time.time()
        self._bus.publish(ev.InstanceReady(now, inst.instance_id, now - inst.started_ts))
        self._dispatcher.poke()   # requests queued by the SLO scheduler may take it now
        self._bus.publish(ev.InstancePrestarted(now, inst.instance_id, inst.function.name, inst.provisioned, ok))
        error = ""
        if not ok:
            failed = inst.init_error
            error = (failed.payload.decode(errors="replace")[:500] if failed is not None
                     else f"Init did not finish within {self._init_timeout_s:.0f} s")
            log.warning("instance %s of %s, started ahead of requests, failed its init: %s",
                        inst.instance_id, inst.function.name, error)
            inst.fail_and_kill()
        elif inst.state is InstanceState.IDLE:
            self._bus.publish(ev.InstanceIdle(now, inst.instance_id, inst.function.name, inst.provisioned))
        if on_done is not None:
            on_done(inst, ok, error)
