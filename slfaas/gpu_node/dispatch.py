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
from collections import Counter
from dataclasses import dataclass
from typing import Callable

from slfaas.errors import InvocationCancelled, TooManyRequests
from slfaas.gpu_node.lifecycle.instance import Instance
from slfaas.gpu_node.lifecycle.table import InstanceTable, Valuer
from slfaas.gpu_node.policy.placement import Refuse, start_one
from slfaas.gpu_node.policy.scheduling import Finished, PendingRequest, Scheduler, SchedulerOutput
from slfaas.gpu_node.policy.view import GpuView
from slfaas.gpu_node.types import SHARED_REVISION, FunctionSpec, InvocationRequest

log = logging.getLogger(__name__)

_MAX_ROUNDS = 4   # a decision made on a snapshot that changed under it is re-made, a few times
_MIN_TICK_S = 0.002   # timer rounds at most this often, whatever deadline a scheduler names


@dataclass(frozen=True)
class Placed:
    """Where a request runs. ``cold``: ``instance`` is new and must be started (after stopping
    ``evict``, claimed for it) by the caller. Several requests of one batch may be placed on
    one new instance: the first starts it, the others (``cold`` False) queue in it meanwhile."""

    instance: Instance
    cold: bool
    evict: tuple[Instance, ...] = ()


def prompt_tokens_estimate(payload: bytes) -> int:
    """The latency model's prompt-length bucket, before the runtime has tokenised anything:
    about four bytes of JSON per token of English text."""
    return max(1, len(payload) // 4)


class _Ticket:
    def __init__(self, request: InvocationRequest, arrival_s: float, capacity: int):
        self.request = request
        f = request.function
        self.pending = PendingRequest(request.request_id, f.pool_key, arrival_s, f.ttft_slo_ms, capacity,
                                      prompt_tokens_estimate(request.payload))
        self.done = threading.Event()
        self.placed: Placed | None = None
        self.error: BaseException | None = None


class _Waker:
    """Calls ``tick`` once the clock reaches the armed time (one daemon thread, started on
    first use; re-armed after every scheduling round)."""

    def __init__(self, tick: Callable[[], None], clock: Callable[[], float]):
        self._tick = tick
        self._clock = clock
        self._cond = threading.Condition()
        self._at: float | None = None
        self._closed = False
        self._thread: threading.Thread | None = None
        self._last = float("-inf")   # monotonic time of the last tick

    def arm(self, at: float | None) -> None:
        with self._cond:
            self._at = at
            if at is not None and self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._run, daemon=True, name="dispatch-waker")
                self._thread.start()
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed:
                    if self._at is None:
                        self._cond.wait()
                        continue
                    delay = max(self._at - self._clock(), self._last + _MIN_TICK_S - time.monotonic())
                    if delay <= 0:
                        self._at = None
                        break
                    self._cond.wait(min(delay, 60.0))
                if self._closed:
                    return
            self._last = time.monotonic()
            try:
                self._tick()
            except Exception:   # a failed round must not end the timer
                log.exception("scheduling round at a deadline failed")


class Dispatcher:
    def __init__(self, scheduler: Scheduler, table: InstanceTable, max_instances: int,
                 stop: Callable[[Instance], None], gpu_view: Callable[[], GpuView | None] = lambda: None,
                 clock: Callable[[], float] = time.time,
                 shared_spec: Callable[[FunctionSpec], FunctionSpec] | None = None, max_wait_s: float | None = None,
                 value: Valuer | None = None):
        """``stop``: stops an instance claimed for eviction (called outside the lock).
        ``shared_spec``: the platform runtime's spec for a function in shared execution.
        ``max_wait_s``: how long a caller waits for a placement unless it says otherwise.
        ``value``: an instance's device MB and its function's arrival rate (for offloading)."""
        self._scheduler = scheduler
        self._shared_spec = shared_spec
        self._max_wait_s = max_wait_s
        self._value = value
        self._table = table
        self._max_instances = max_instances
        self._stop = stop
        self._gpu_view = gpu_view
        self._clock = clock
        self._lock = threading.Lock()
        self._tickets: dict[str, _Ticket] = {}
        self._to_stop: list[Instance] = []   # claimed evictees whose start was re-decided
        self._waker = _Waker(self._tick, clock)

    def submit(self, request: InvocationRequest, timeout_s: float | None = None) -> Placed:
        """Place ``request``; raises ``TooManyRequests`` when the scheduler refuses it."""
        ticket = _Ticket(request, self._clock(), self._runtime_spec(request.function).max_batch_size)
        with self._lock:
            self._tickets[request.request_id] = ticket
            self._scheduler.add_request(ticket.pending)
            self._schedule()
        self._stop_claimed()
        if not ticket.done.wait(timeout_s if timeout_s is not None else self._max_wait_s):
            # settled now, by this abort or by the placement that won the race to it
            self.abort(request.request_id, TooManyRequests("The request waited too long for an instance",
                                                           reason="QueueTimeout"))
        if ticket.error is not None:
            raise ticket.error
        assert ticket.placed is not None
        return ticket.placed

    def start_ahead(self, function: FunctionSpec, may_evict: bool) -> Placed:
        """A new instance of ``function`` for no request (pre-warmed or provisioned), added to
        the table under the same lock as requests' placements, so the instance limit holds (for
        a function in shared execution: its backbone's shared runtime).
        Its evictees are claimed; the caller stops them and starts it. Raises ``TooManyRequests``
        when there is no room."""
        try:
            with self._lock:
                for _ in range(_MAX_ROUNDS):
                    snapshot = self._table.snapshot(self._clock(), self._max_instances, self._gpu_view(),
                                                    self._scheduler.waiting_keys(), self._value)
                    decision = start_one(snapshot, function.pool_key, may_evict)
                    if isinstance(decision, Refuse):
                        raise TooManyRequests(decision.message, reason=decision.reason)
                    claimed = [v for v in (self._table.get(iid) for iid in decision.evict)
                               if v is not None and v.claim_idle()]
                    if len(claimed) == len(decision.evict):
                        inst = self._new_instance(function, [])
                        return Placed(inst, cold=True, evict=tuple(claimed))
                    self._to_stop.extend(claimed)   # an evictee was taken meanwhile: decide again
                raise TooManyRequests("The node is too busy to start an instance now",
                                      reason="ConcurrentInvocationLimitExceeded")
        finally:
            self._stop_claimed()

    def abort(self, request_id: str, error: BaseException | None = None) -> bool:
        """Drop a request not placed yet (its caller gave up); its waiting ``submit`` raises
        ``error`` (``InvocationCancelled`` by default) at once."""
        with self._lock:
            if request_id not in self._tickets:   # placed (or refused) already
                return False
            self._scheduler.abort(request_id)
            self._settle(request_id, error=error or InvocationCancelled(
                "The invocation was cancelled before it ran: its caller went away"))
            return True

    def finished(self, done: Finished) -> None:
        with self._lock:
            self._scheduler.update([done])
            if self._tickets:    # requests waiting for room: an instance may have freed some
                self._schedule()
        self._stop_claimed()

    def close(self) -> None:
        """No more rounds; requests still waiting are refused (the node is going away)."""
        self._waker.close()
        with self._lock:
            for rid in list(self._tickets):
                self._scheduler.abort(rid)
                self._settle(rid, error=TooManyRequests("The node is shutting down", reason="NodeShuttingDown"))

    def poke(self) -> None:
        """Something the scheduler waits for happened (an instance became ready): a round now."""
        if self.waiting():
            self._tick()

    def _tick(self) -> None:
        with self._lock:
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

    def waiting_by_function(self) -> dict[str, int]:
        with self._lock:
            return dict(Counter(t.request.function.name for t in self._tickets.values()))

    def _schedule(self) -> None:
        """Caller holds ``_lock``."""
        requeued: set[str] = set()
        for _ in range(_MAX_ROUNDS):
            snapshot = self._table.snapshot(self._clock(), self._max_instances, self._gpu_view(),
                                            self._scheduler.waiting_keys(), self._value)
            requeued = self._apply(self._scheduler.schedule(snapshot))
            if not requeued:
                break
        else:
            for rid in requeued:   # the node kept changing under every round: these give up
                self._settle(rid, error=TooManyRequests("The node is too busy to place this request now",
                                                        reason="ConcurrentInvocationLimitExceeded"))
                self._scheduler.abort(rid)
        self._waker.arm(self._scheduler.next_deadline_s())

    def _apply(self, out: SchedulerOutput) -> set[str]:
        """Apply one round's decisions; returns the requests whose decisions must be re-made
        (the snapshot was stale), put back into the scheduler."""
        again: set[str] = set()
        for r in out.refuse:
            self._settle(r.request_id, error=TooManyRequests(r.message, reason=r.reason,
                                                             retry_after_s=r.retry_after_s))
        for a in out.assign:
            inst = self._table.get(a.instance_id)
            if inst is not None and inst.reserve(a.request_id):
                self._settle(a.request_id, placed=Placed(inst, cold=False))
            elif self._requeue(a.request_id):
                again.add(a.request_id)
        for s in out.start:
            batch = [rid for rid in (s.request_id, *s.riders) if rid in self._tickets]
            claimed = [v for v in (self._table.get(iid) for iid in s.evict) if v is not None and v.claim_idle()]
            if len(claimed) < len(s.evict) or not batch:   # an evictee was taken meanwhile: decide again
                self._to_stop.extend(claimed)
                again.update(rid for rid in batch if self._requeue(rid))
                continue
            inst = self._new_instance(self._tickets[batch[0]].request.function, batch)
            self._settle(batch[0], placed=Placed(inst, cold=True, evict=tuple(claimed)))
            for rid in batch[1:]:
                self._settle(rid, placed=Placed(inst, cold=False))
        return again

    def _runtime_spec(self, function: FunctionSpec) -> FunctionSpec:
        """The spec of the runtime that serves ``function``: its own, or (shared execution) its
        backbone's shared runtime."""
        if not function.shared_execution:
            return function
        if self._shared_spec is None:
            raise TooManyRequests("This node runs no shared runtime; deploy the function without "
                                  "SLFAAS_SHARED_EXECUTION", reason="SharedExecutionUnavailable")
        shared = self._shared_spec(function)
        assert shared.revision_id == SHARED_REVISION and shared.pool_key == function.pool_key
        return shared

    def _new_instance(self, function: FunctionSpec, request_ids: list[str]) -> Instance:
        """``request_ids``: the batch it is started for (empty: started ahead of requests)."""
        function = self._runtime_spec(function)
        inst = Instance(f"{function.name[:24]}-{uuid.uuid4().hex[:8]}", function,
                        reserved_for=request_ids[0] if request_ids else None,
                        capacity=max(1, function.max_batch_size), riders=tuple(request_ids[1:]))
        self._table.add(inst)
        return inst

    def _requeue(self, request_id: str) -> bool:
        """Put a request back for another round. Evictees already claimed (STOPPING) for it
        cannot be idle again: they are stopped anyway, as they were chosen to be."""
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
