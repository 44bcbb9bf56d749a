"""The dispatcher: requests in, each placed on an instance by the scheduler's decisions.

Per-function queues and the order of service are the ``Scheduler``'s (a pure policy); this is
the mechanism around it: it takes a snapshot of the node, asks the scheduler, and applies the
answers (reserve a warm instance, create a new one after claiming its evictees, refuse). A
caller waits on its ticket until its request is placed; ``FcfsScheduler`` places or refuses
every request in the round it arrives in, so that wait never blocks today.
"""
from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Callable

from slfaas.errors import TooManyRequests
from slfaas.gpu_node.lifecycle.instance import Instance
from slfaas.gpu_node.lifecycle.table import InstanceTable
from slfaas.gpu_node.policy.placement import Refuse, start_one
from slfaas.gpu_node.policy.scheduling import Finished, PendingRequest, Scheduler, SchedulerOutput
from slfaas.gpu_node.policy.view import GpuView
from slfaas.gpu_node.types import FunctionSpec, InvocationRequest

log = logging.getLogger(__name__)

_MAX_ROUNDS = 4   # a decision made on a snapshot that changed under it is re-made, a few times


@dataclass(frozen=True)
class Placed:
    """Where a request runs. ``cold``: ``instance`` is new and must be started (after stopping
    ``evict``, claimed for it) by the caller."""

    instance: Instance
    cold: bool
    evict: tuple[Instance, ...] = ()


class _Ticket:
    def __init__(self, request: InvocationRequest, arrival_s: float):
        self.request = request
        self.pending = PendingRequest(request.request_id, request.function.pool_key, arrival_s)
        self.done = threading.Event()
        self.placed: Placed | None = None
        self.error: BaseException | None = None


class Dispatcher:
    def __init__(self, scheduler: Scheduler, table: InstanceTable, max_instances: int,
                 stop: Callable[[Instance], None], gpu_view: Callable[[], GpuView | None] = lambda: None,
                 clock: Callable[[], float] = time.time):
        """``stop``: stops an instance claimed for eviction (called outside the lock)."""
        self._scheduler = scheduler
        self._table = table
        self._max_instances = max_instances
        self._stop = stop
        self._gpu_view = gpu_view
        self._clock = clock
        self._lock = threading.Lock()
        self._tickets: dict[str, _Ticket] = {}
        self._to_stop: list[Instance] = []   # claimed evictees whose start was re-decided

    def submit(self, request: InvocationRequest, timeout_s: float | None = None) -> Placed:
        """Place ``request``; raises ``TooManyRequests`` when the scheduler refuses it."""
        ticket = _Ticket(request, self._clock())
        with self._lock:
            self._tickets[request.request_id] = ticket
            self._scheduler.add_request(ticket.pending)
            self._schedule()
        self._stop_claimed()
        if not ticket.done.wait(timeout_s):
            self.abort(request.request_id)
            raise TooManyRequests("The request waited too long for an instance", reason="QueueTimeout")
        if ticket.error is not None:
            raise ticket.error
        assert ticket.placed is not None
        return ticket.placed

    def start_ahead(self, function: FunctionSpec, may_evict: bool) -> Placed:
        """A new instance of ``function`` for no request (pre-warmed or provisioned), added to
        the table under the same lock as requests' placements, so the instance limit holds.
        Its evictees are claimed; the caller stops them and starts it. Raises ``TooManyRequests``
        when there is no room."""
        try:
            with self._lock:
                for _ in range(_MAX_ROUNDS):
                    snapshot = self._table.snapshot(self._clock(), self._max_instances, self._gpu_view(),
                                                    self._scheduler.waiting_keys())
                    decision = start_one(snapshot, function.pool_key, may_evict)
                    if isinstance(decision, Refuse):
                        raise TooManyRequests(decision.message, reason=decision.reason)
                    claimed = [v for v in (self._table.get(iid) for iid in decision.evict)
                               if v is not None and v.claim_idle()]
                    if len(claimed) == len(decision.evict):
                        inst = self._new_instance(function, None)
                        return Placed(inst, cold=True, evict=tuple(claimed))
                    self._to_stop.extend(claimed)   # an evictee was taken meanwhile: decide again
                raise TooManyRequests("The node is too busy to start an instance now",
                                      reason="ConcurrentInvocationLimitExceeded")
        finally:
            self._stop_claimed()

    def abort(self, request_id: str) -> bool:
        """Drop a request not placed yet (its caller gave up)."""
        with self._lock:
            ticket = self._tickets.pop(request_id, None)
            return ticket is not None and self._scheduler.abort(request_id)

    def finished(self, request_id: str, instance_id: str, ok: bool) -> None:
        with self._lock:
            self._scheduler.update([Finished(request_id, instance_id, ok)])
            if self._tickets:    # requests waiting for room: an instance may have freed some
                self._schedule()
        self._stop_claimed()

    def _stop_claimed(self) -> None:
        with self._lock:
            victims, self._to_stop = self._to_stop, []
        for inst in victims:
            self._stop(inst)

    def waiting(self) -> int:
        with self._lock:
            return len(self._tickets)

    def _schedule(self) -> None:
        """Caller holds ``_lock``."""
        for _ in range(_MAX_ROUNDS):
            snapshot = self._table.snapshot(self._clock(), self._max_instances, self._gpu_view(),
                                            self._scheduler.waiting_keys())
            if not self._apply(self._scheduler.schedule(snapshot)):
                return
        for rid in list(self._tickets):   # the node kept changing under every round
            self._settle(rid, error=TooManyRequests("The node is too busy to place this request now",
                                                    reason="ConcurrentInvocationLimitExceeded"))
            self._scheduler.abort(rid)

    def _apply(self, out: SchedulerOutput) -> bool:
        """Apply one round's decisions; True if some must be re-made (the snapshot was stale)."""
        again = False
        for r in out.refuse:
            self._settle(r.request_id, error=TooManyRequests(r.message, reason=r.reason))
        for a in out.assign:
            inst = self._table.get(a.instance_id)
            if inst is not None and inst.reserve(a.request_id):
                self._settle(a.request_id, placed=Placed(inst, cold=False))
            else:
                again |= self._requeue(a.request_id)
        for s in out.start:
            claimed = [v for v in (self._table.get(iid) for iid in s.evict) if v is not None and v.claim_idle()]
            if len(claimed) < len(s.evict):   # an evictee was taken meanwhile: decide again
                again |= self._requeue(s.request_id, claimed)
                continue
            ticket = self._tickets.get(s.request_id)
            if ticket is None:
                continue
            inst = self._new_instance(ticket.request.function, s.request_id)
            self._settle(s.request_id, placed=Placed(inst, cold=True, evict=tuple(claimed)))
        return again

    def _new_instance(self, function: FunctionSpec, request_id: str | None) -> Instance:
        inst = Instance(f"{function.name[:24]}-{uuid.uuid4().hex[:8]}", function, reserved_for=request_id)
        self._table.add(inst)
        return inst

    def _requeue(self, request_id: str, claimed: list[Instance] | None = None) -> bool:
        """Put a request back for another round. Evictees already claimed (STOPPING) for it
        cannot be idle again: they are stopped anyway, as they were chosen to be."""
        self._to_stop.extend(claimed or [])
        ticket = self._tickets.get(request_id)
        if ticket is None:
            return False
        self._scheduler.add_request(ticket.pending)
        return True

    def _settle(self, request_id: str, placed: Placed | None = None, error: BaseException | None = None) -> None:
        ticket = self._tickets.pop(request_id, None)
        if ticket is None:
            return
        ticket.placed, ticket.error = placed, error
        ticket.done.set()
