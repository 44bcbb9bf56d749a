"""The invocations an instance runs at once share ONE timeline activity (IO-free).

A batching instance runs several invocations in the same forward passes: on the device they
are one process's work, so they are one activity of the processor-sharing timeline
(``run:<instance>``), competing with other instances as one. The activity starts with the
instance's first invocation and ends with its last; its accrual is handed out evenly among
the invocations running at each moment (each one's *even share*), and each ending invocation
is billed at most what the activity accrued and its earlier members were not billed, so the
sum billed never exceeds the activity's share of the device. What the activity accrued and
nobody was billed becomes platform overhead when it ends. An instance running one
invocation at a time is a batch of one: its activity is that invocation's.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Callable

from slfaas.billing.timeline import DeviceTimeline


@dataclass(frozen=True)
class Settled:
    window_s: float         # the activity's accrual while the invocation ran (shared with its batch)
    even_s: float           # the invocation's even share of it
    billed_s: float         # what it is billed (its price, capped by what is left to bill)
    released_s: float       # overhead the activity leaves behind if it ended with this invocation


@dataclass
class _Member:
    start_s: float          # the activity's accrual when it joined
    even_s: float = 0.0


@dataclass
class _Group:
    instance_id: str
    seen_s: float = 0.0     # the activity's accrual at the last hand-out
    billed_s: float = 0.0   # billed to members that ended
    members: dict[str, _Member] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"run:{self.instance_id}"


class InstanceActivities:
    """Thread-safe; each method takes the event's time."""

    def __init__(self, timeline: DeviceTimeline):
        self._timeline = timeline
        self._lock = threading.Lock()
        self._groups: dict[str, _Group] = {}      # instance id → its running batch
        self._instance_of: dict[str, str] = {}    # request id → instance id

    def start(self, request_id: str, instance_id: str, ts: float) -> None:
        with self._lock:
            self._leave(request_id, ts)           # placed again elsewhere: the old place ends
            group = self._groups.get(instance_id)
            if group is None:
                group = self._groups[instance_id] = _Group(instance_id)
                self._timeline.start_activity(group.key, "compute", ts)
            else:
                self._hand_out(group, ts)
            group.members[request_id] = _Member(group.seen_s)
            self._instance_of[request_id] = instance_id

    def finish(self, request_id: str, ts: float, price: Callable[[float, float], float]) -> Settled:
        """End an invocation; ``price(window_s, even_s)`` says what it should be billed. An
        invocation that never started (its instance's init failed) had no window."""
        with self._lock:
            group, member = self._member(request_id, ts)
            if group is None or member is None:
                return Settled(0.0, 0.0, 0.0, 0.0)
            window_s, even_s = group.seen_s - member.start_s, member.even_s
            billed = max(0.0, min(price(window_s, even_s), group.seen_s - group.billed_s))
            group.billed_s += billed
            return Settled(window_s, even_s, billed, self._end_if_empty(group, ts))

    def abort(self, request_id: str, ts: float) -> float:
        """Drop an invocation that ends unbilled; returns overhead released (see ``Settled``)."""
        with self._lock:
            return self._leave(request_id, ts)

    def _leave(self, request_id: str, ts: float) -> float:
        group, member = self._member(request_id, ts)
        return 0.0 if group is None or member is None else self._end_if_empty(group, ts)

    def _member(self, request_id: str, ts: float) -> tuple[_Group | None, _Member | None]:
        """Caller holds the lock: the request's group with shares handed out to ``ts``, and its
        member record, removed."""
        instance_id = self._instance_of.pop(request_id, None)
        group = self._groups.get(instance_id) if instance_id is not None else None
        if group is None:
            return None, None
        self._hand_out(group, ts)
        return group, group.members.pop(request_id, None)

    def _hand_out(self, group: _Group, ts: float) -> None:
        accrued = self._timeline.accrued(group.key, ts)
        if accrued is None:
            return
        if group.members:
            share = (accrued - group.seen_s) / len(group.members)
            for m in group.members.values():
                m.even_s += share
        group.seen_s = accrued

    def _end_if_empty(self, group: _Group, ts: float) -> float:
        if group.members:
            return 0.0
        self._timeline.end_activity_if_active(group.key, ts)
        del self._groups[group.instance_id]
        return max(0.0, group.seen_s - group.billed_s)
