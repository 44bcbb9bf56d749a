"""Each function version's keep-alive state on this node: its policy (its own settings over the
node's default) and, under the histogram policy, its idle-time histogram, fed by the node's
invocation events (arrival of one invocation minus the end of the one before)."""
from __future__ import annotations

import threading
from dataclasses import dataclass

from slfaas.gpu_node import events as ev
from slfaas.gpu_node.lifecycle.table import InstanceTable
from slfaas.gpu_node.policy.keepalive import (FunctionState, HistogramKeepAlive, IdleHistogram, KeepAlivePolicy,
                                              history_for, policy_for)
from slfaas.gpu_node.policy.view import PoolKey
from slfaas.gpu_node.types import FunctionSpec

VersionKey = tuple[str, str]   # (function name, version): histories outlive an instance's revision


@dataclass
class _Entry:
    spec: FunctionSpec            # the version's latest spec seen here (what a pre-warm starts)
    history: IdleHistogram | None
    retired: bool = False         # its revision was retired: never pre-warmed until invoked again


class IdleHistories:
    def __init__(self, table: InstanceTable, default: KeepAlivePolicy, histogram: HistogramKeepAlive | None = None):
        """``histogram``: the node's histogram settings, for functions that choose that policy
        on a node whose ``default`` is a fixed TTL."""
        self._table = table
        self.default = default
        self._histogram = histogram
        self._lock = threading.Lock()
        self._entries: dict[VersionKey, _Entry] = {}
        self._init_s: dict[VersionKey, float] = {}   # the version's last measured init (a pre-warm's lead)
        self.lead_margin_s = 0.0                      # added to every lead (the reaper's tick)

    def policy(self, spec: FunctionSpec) -> KeepAlivePolicy:
        ka = spec.keep_alive
        return policy_for(self.default, ka.policy, ka.ttl_s, ka.bin_width_s, self._histogram)

    def on_event(self, event: ev.NodeEvent) -> None:
        """An ``EventBus`` subscriber."""
        if isinstance(event, ev.InvocationEnded):
            inst = self._table.get(event.instance_id)
            if inst is not None:   # an instance already gone (it crashed) tells no revision
                self.record(inst.function, event.submitted_ts, event.ts)
        elif isinstance(event, ev.InstanceReady) and event.init_wall_s is not None:
            inst = self._table.get(event.instance_id)
            if inst is not None:
                with self._lock:
                    self._init_s[(inst.function.name, inst.function.version)] = event.init_wall_s

    def record(self, spec: FunctionSpec, arrival_s: float, end_s: float) -> None:
        """One invocation of ``spec`` arrived at ``arrival_s`` and ended at ``end_s``."""
        policy = self.policy(spec)
        key = (spec.name, spec.version)
        with self._lock:
            entry = self._entries.get(key)
            if not isinstance(policy, HistogramKeepAlive):
                self._entries[key] = _Entry(spec, None)   # a fixed TTL needs no history
                return
            hist = history_for(policy, entry.history if entry is not None else None)
            self._entries[key] = _Entry(spec, hist.invoked(arrival_s, end_s))

    def state(self, spec: FunctionSpec) -> FunctionState:
        with self._lock:
            entry = self._entries.get((spec.name, spec.version))
            lead_s = self._lead_s((spec.name, spec.version))
        return FunctionState(self.policy(spec), entry.history if entry is not None else None, lead_s)

    def _lead_s(self, key: VersionKey) -> float:
        """Caller holds ``_lock``."""
        return self._init_s.get(key, 0.0) + self.lead_margin_s

    def known(self) -> dict[PoolKey, tuple[FunctionSpec, FunctionState]]:
        """Every version with history here whose revision is current, by its pool key."""
        with self._lock:
            entries = [(e, self._lead_s((e.spec.name, e.spec.version))) for e in self._entries.values()
                       if not e.retired]
        return {e.spec.pool_key: (e.spec, FunctionState(self.policy(e.spec), e.history, lead_s))
                for e, lead_s in entries}

    def forget(self, function_name: str, keep_revision: str | None, version: str | None) -> None:
        """The node retired a function's revisions (``NodeApi.retire``): nothing of theirs is
        pre-warmed any more; a version updated in place keeps its history."""
        with self._lock:
            for key in [k for k, e in self._entries.items() if k[0] == function_name
                        and (version is None or k[1] == version) and e.spec.revision_id != keep_revision]:
                if keep_revision is None:
                    del self._entries[key]
                    self._init_s.pop(key, None)
                else:
                    self._entries[key].retired = True
