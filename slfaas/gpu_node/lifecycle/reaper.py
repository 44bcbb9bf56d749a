"""Keep-alive's mechanism: stops idle instances whose function's policy says so, and (hybrid
histogram policy) pre-warms a function whose pre-warm window has just ended. The decisions are
``policy.keepalive``'s, on a snapshot of the node and each function's state."""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from slfaas.errors import TooManyRequests
from slfaas.gpu_node.lifecycle.idle_history import IdleHistories
from slfaas.gpu_node.lifecycle.launcher import Launcher
from slfaas.gpu_node.lifecycle.table import InstanceTable
from slfaas.gpu_node.policy.keepalive import FixedKeepAlive, FunctionState, due_prewarms, expired
from slfaas.gpu_node.policy.view import NodeSnapshot, PoolKey
from slfaas.gpu_node.types import FunctionSpec

log = logging.getLogger(__name__)


class KeepAliveReaper:
    def __init__(self, table: InstanceTable, launcher: Launcher, histories: IdleHistories, max_instances: int,
                 prewarm: Callable[[FunctionSpec], object] | None = None, clock: Callable[[], float] = time.time,
                 interval_s: float | None = None):
        """``prewarm``: starts an instance of a function ahead of its next request (raises
        ``TooManyRequests`` when the node has no room); None: never pre-warm."""
        self._table = table
        self._launcher = launcher
        self.histories = histories
        self._max_instances = max_instances
        self._prewarm = prewarm
        self._clock = clock
        self._prewarmed: set[tuple[PoolKey, float]] = set()   # (key, idle period) already pre-warmed
        self._closed = threading.Event()
        default = histories.default
        ttl_s = default.ttl_s if isinstance(default, FixedKeepAlive) else default.fallback_ttl_s
        width_s = None if isinstance(default, FixedKeepAlive) else default.bin_width_s
        self.interval_s = interval_s or max(0.05, min(1.0, ttl_s / 4, (width_s or 1.0) / 2))
        histories.lead_margin_s = self.interval_s   # a pre-warm may start up to one tick late
        threading.Thread(target=self._loop, daemon=True, name="keep-alive-reaper").start()

    def reap(self) -> list[str]:
        """Stop what keep-alive says to stop; start what it says to pre-warm. Returns the ids
        of the instances stopped."""
        now = self._clock()
        snapshot = self._table.snapshot(now, self._max_instances, None)
        states: dict[PoolKey, FunctionState] = {}
        for live in self._table.all():
            if live.function.pool_key not in states:
                states[live.function.pool_key] = self.histories.state(live.function)
        stopped = []
        for iid in expired(snapshot, functions=states):
            inst = self._table.get(iid)
            if inst is not None and not inst.provisioned and inst.claim_idle():   # nobody took it meanwhile
                log.info("keep-alive: stopping idle instance %s (%s)", iid, states[inst.function.pool_key].policy)
                self._launcher.stop(inst)
                stopped.append(iid)
        if self._prewarm is not None:
            self._prewarm_due(self._table.snapshot(self._clock(), self._max_instances, None))
        return stopped

    def _prewarm_due(self, snapshot: NodeSnapshot) -> None:
        known = self.histories.known()
        functions = {k: state for k, (_spec, state) in known.items()}
        for key in due_prewarms(snapshot, functions, frozenset(self._prewarmed)):
            spec, state = known[key]
            assert state.history is not None and state.history.idle_since_s is not None
            self._prewarmed.add((key, state.history.idle_since_s))
            try:
                assert self._prewarm is not None
                self._prewarm(spec)
                log.info("keep-alive: pre-warming %s (its pre-warm window ended)", spec.name)
            except TooManyRequests as exc:
                log.info("keep-alive: no room to pre-warm %s: %s", spec.name, exc)
        current = {(k, s.history.idle_since_s) for k, s in functions.items() if s.history is not None}
        self._prewarmed &= current   # forget idle periods that have ended

    def _loop(self) -> None:
        while not self._closed.wait(self.interval_s):
            try:
                self.reap()
            except Exception:
                log.exception("keep-alive reaping failed")

    def close(self) -> None:
        self._closed.set()
