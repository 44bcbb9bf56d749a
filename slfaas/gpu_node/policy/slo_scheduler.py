"""SLO-aware batch formation per function and arbitration between functions on one device.

Requests wait in a queue per pool key (function version; functions that opted into shared
execution share their backbone's key), ordered by deadline (arrival + TTFT SLO). Each round,
for every queue, the scheduler works out the batch it would dispatch now:

* where: an instance of the key already running a batch with room (the request joins it
  between decode steps: no new batch on the device), else its idle instance, else a new
  instance (the placement policy's choice, evictions included), which costs a cold start;
* how large: the largest b up to the room whose estimated time to first token, T(b) under the
  device's contention of the moment (plus the cold start), still meets the tightest waiting
  request's remaining slack; when even b = 1 cannot, the SLO is lost already and the batch
  takes all the room it has (throughput first);
* whether now: a join goes at once; a new batch closes when the queue holds that largest b,
  when its slack runs out (the latest start that still meets the tightest deadline), or when
  no more arrivals are expected before then (a lone request never waits for company).
  A function whose instances are all full scales out (a new instance) once a full batch waits
  or its slack runs out.

Among the batches ready, the least slack (SLO − waited − estimated time) goes first; slacks
within ``slack_quantum_ms`` are a tie broken by the virtual token counter, and a function more
than ``fairness_window_tokens`` ahead of the least served one waiting goes after the others,
so a tight SLO cannot starve the rest. A new batch needs a free place among the device's
running batches (``ConcurrencyLimit``, AIMD on service TTFT vs SLO). Backpressure: a full
queue and a request waiting longer than ``max_queue_s`` are refused (429 with Retry-After).
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, replace
from typing import AbstractSet, Sequence

from slfaas.gpu_node.policy.arbitration import ConcurrencyLimit, VirtualTokenCounter
from slfaas.gpu_node.policy.latency import LatencyModel
from slfaas.gpu_node.policy.placement import Refuse, Reuse, place
from slfaas.gpu_node.policy.scheduling import (Assign, Finished, PendingRequest, RefuseRequest, SchedulerOutput,
                                               StartFor)
from slfaas.gpu_node.policy.view import InstanceView, NodeSnapshot, PoolKey


_EPS_MS = 1e-3   # clock values are floats: a deadline met to the microsecond is met


@dataclass(frozen=True)
class SloConfig:
    default_slo_ms: float = 1000.0
    max_queue_per_function: int = 64     # requests waiting per pool key; beyond: 429
    max_queue_s: float = 30.0            # the longest a request waits to be placed; then: 429
    max_running_batches: int = 32        # batches running at once on the device (AIMD's ceiling)
    min_running_batches: int = 1
    contention_penalty: float = 0.5      # κ: each other running batch slows a batch by κ·T
    service_share: float = 0.5           # AIMD: service TTFT above this share of the SLO is congestion
    slack_quantum_ms: float = 50.0       # slacks this close are a tie
    fairness_window_tokens: float = 16384.0
    arrival_window_s: float = 2.0        # recent arrivals predict whether waiting grows a batch

    def __post_init__(self) -> None:
        positive = (self.default_slo_ms, self.max_queue_s, self.slack_quantum_ms, self.arrival_window_s,
                    self.fairness_window_tokens, self.service_share)
        if not all(math.isfinite(v) and v > 0 for v in positive) or self.max_queue_per_function < 1 \
                or not 1 <= self.min_running_batches <= self.max_running_batches or self.contention_penalty < 0:
            raise ValueError(f"bad SLO scheduler settings: {self}")


@dataclass(frozen=True)
class _Dispatch:
    key: PoolKey
    prompt_tokens: int
    slo_ms: float
    seq: int
    contention: float


@dataclass(frozen=True)
class _Candidate:
    key: PoolKey
    batch: tuple[PendingRequest, ...]
    kind: str                 # "join" | "warm" | "start"
    instance_id: str | None   # join/warm: the target
    slack_ms: float           # the tightest request's slack minus the estimated time
    ready: bool
    hold_until_s: float       # when a held batch must close


class SloScheduler:
    def __init__(self, config: SloConfig | None = None, model: LatencyModel | None = None):
        self.config = config or SloConfig()
        self.model = model or LatencyModel()
        c = self.config
        self.limit = ConcurrencyLimit(c.min_running_batches, c.max_running_batches)
        self.fairness = VirtualTokenCounter()
        self._queues: dict[PoolKey, list[PendingRequest]] = {}
        self._refusals: list[RefuseRequest] = []
        self._dispatched: dict[str, _Dispatch] = {}
        self._arrivals: dict[PoolKey, deque[float]] = {}
        self._deadline: float | None = None

    # the Scheduler protocol
    def add_request(self, request: PendingRequest) -> None:
        again = self._dispatched.pop(request.request_id, None) is not None   # a decision re-made
        queue = self._queues.get(request.key, [])
        if not again and len(queue) >= self.config.max_queue_per_function:
            self._refusals.append(RefuseRequest(
                request.request_id, "FunctionQueueFull",
                f"Rate Exceeded: {len(queue)} requests of this function are queued on the node, its limit; "
                f"retry later", self._retry_after_s(request.key, queue)))
            return
        if not queue:
            self.fairness.activate(request.key, self._queues)
        queue.append(request)
        queue.sort(key=lambda r: (self._deadline_s(r), r.arrival_s, r.request_id))
        self._queues[request.key] = queue
        if not again:
            arrivals = self._arrivals.setdefault(request.key, deque(maxlen=256))
            arrivals.append(request.arrival_s)

    def abort(self, request_id: str) -> bool:
        for key, queue in self._queues.items():
            for i, r in enumerate(queue):
                if r.request_id == request_id:
                    del queue[i]
                    if not queue:
                        del self._queues[key]
                    return True
        return False

    def waiting_keys(self) -> frozenset[PoolKey]:
        return frozenset(self._queues)

    def next_deadline_s(self) -> float | None:
        return self._deadline

    def update(self, finished: Sequence[Finished]) -> None:
        for f in finished:
            d = self._dispatched.pop(f.request_id, None)
            if d is None:
                continue
            if f.init_ms is not None:
                self.model.observe_cold_start(d.key, f.init_ms)
            if f.ok and f.ttft_ms is not None:
                tokens = f.prompt_tokens if f.prompt_tokens is not None else d.prompt_tokens
                self.model.observe(d.key, tokens, max(1, f.batch_size), f.ttft_ms, d.contention)
                self.limit.observe(d.seq, congested=f.ttft_ms > self.config.service_share * d.slo_ms)

    def schedule(self, snapshot: NodeSnapshot) -> SchedulerOutput:
        now = snapshot.now_s
        refuse, self._refusals = self._refusals, []
        refuse += self._expire(now)
        assign: list[Assign] = []
        start: list[StartFor] = []
        view = list(snapshot.instances)
        blocked: set[PoolKey] = set()     # no instance can be had for them this round
        sized: set[str] = set()           # instances given a batch this round: no one joins it now
        while True:
            running = sum(1 for i in view if i.alive and i.inflight > 0)
            cands = [c for key, q in self._queues.items() if key not in blocked
                     for c in (self._candidate(key, q, view, running, now, sized),)]
            ready = [c for c in cands if c.ready and (c.kind == "join" or running == 0 or running < self.limit.limit)]
            if not ready:
                break
            backlogged = list(self._queues)
            best = min(ready, key=lambda c: (
                self.fairness.lead(c.key, backlogged) > self.config.fairness_window_tokens,
                math.floor(c.slack_ms / self.config.slack_quantum_ms), self.fairness.counter(c.key), c.key))
            if best.kind == "start":
                others = frozenset(k for k in self._queues if k != best.key)
                placing = [replace(i, capacity=i.inflight) if i.instance_id in sized else i for i in view]
                decision = place(replace(snapshot, instances=tuple(placing), waiting_keys=others), best.key)
                if isinstance(decision, Refuse):
                    blocked.add(best.key)
                    if not others and not any(i.alive and i.inflight > 0 for i in view):   # nothing will change: 429
                        retry = self._retry_after_s(best.key, self._queues[best.key])
                        refuse += [RefuseRequest(r.request_id, decision.reason, decision.message, retry)
                                   for r in self._take(best.key, len(self._queues[best.key]))]
                    continue
                if isinstance(decision, Reuse):   # room appeared (a decision of this round): take it
                    best = replace(best, kind="warm", instance_id=decision.instance_id, batch=best.batch[:1])
                else:
                    first, *rest = best.batch
                    start.append(StartFor(first.request_id, decision.evict, tuple(r.request_id for r in rest)))
                    view = [replace(i, state="STOPPING") if i.instance_id in decision.evict else i for i in view]
                    view.append(InstanceView(f"new:{first.request_id}", best.key, "STARTING", now,
                                             inflight=len(best.batch), capacity=max(1, first.capacity)))
            if best.kind != "start":
                sized.add(str(best.instance_id))
                assign += [Assign(r.request_id, str(best.instance_id)) for r in best.batch]
                view = [replace(i, state="BUSY", inflight=i.inflight + len(best.batch))
                        if i.instance_id == best.instance_id else i for i in view]
            self._dispatch(best, running - (1 if best.kind == "join" else 0))
        self._deadline = self._next_deadline(view, now)
        return SchedulerOutput(tuple(assign), tuple(start), tuple(refuse))

    # helpers
    def _deadline_s(self, r: PendingRequest) -> float:
        return r.arrival_s + (r.slo_ms if r.slo_ms is not None else self.config.default_slo_ms) / 1000

    def _slo_ms(self, r: PendingRequest) -> float:
        return r.slo_ms if r.slo_ms is not None else self.config.default_slo_ms

    def _take(self, key: PoolKey, n: int) -> list[PendingRequest]:
        queue = self._queues[key]
        taken, rest = queue[:n], queue[n:]
        if rest:
            self._queues[key] = rest
        else:
            del self._queues[key]
        return taken

    def _expire(self, now: float) -> list[RefuseRequest]:
        out = []
        for key in list(self._queues):
            queue = self._queues[key]
            late = [r for r in queue if now - r.arrival_s >= self.config.max_queue_s]
            if not late:
                continue
            retry = self._retry_after_s(key, queue)
            self._queues[key] = [r for r in queue if r not in late]
            if not self._queues[key]:
                del self._queues[key]
            out += [RefuseRequest(r.request_id, "QueueTimeLimitExceeded",
                                  f"Rate Exceeded: the request waited {self.config.max_queue_s:g} s on the node "
                                  f"without an instance; retry later", retry) for r in late]
        return out

    def _retry_after_s(self, key: PoolKey, queue: Sequence[PendingRequest]) -> float:
        """About when the queue ahead has drained: a batch's estimated time per full batch."""
        cap = max(1, queue[0].capacity) if queue else 1
        tokens = max((r.prompt_tokens for r in queue), default=0)
        batches = math.ceil((len(queue) + 1) / cap)
        return min(self.config.max_queue_s, max(1.0, batches * self.model.estimate_ms(key, tokens, cap) / 1000))

    def _rate_per_s(self, key: PoolKey, now: float) -> float:
        """Arrivals per second lately: those in the window after the first of them, over the
        time since it (a lone arrival predicts none; a burst, many)."""
        recent = [t for t in self._arrivals.get(key, ()) if 0 <= now - t < self.config.arrival_window_s]
        if len(recent) < 2:
            return 0.0
        return (len(recent) - 1) / max(now - min(recent), 1e-3)

    def _candidate(self, key: PoolKey, queue: list[PendingRequest], view: list[InstanceView], running: int,
                   now: float, sized: AbstractSet[str] = frozenset()) -> _Candidate:
        cap = max(1, queue[0].capacity)
        mine = [i for i in view if i.pool_key == key]
        joinable = [i for i in mine if i.has_room and i.inflight > 0 and i.instance_id not in sized]
        idle = [i for i in mine if i.has_room and i.inflight == 0]
        target: InstanceView | None = None
        if joinable:
            kind, target = "join", max(joinable, key=lambda i: (i.capacity - i.inflight, i.instance_id))
            room, others, extra_ms = target.capacity - target.inflight, max(0, running - 1), 0.0
        elif idle:
            kind, target = "warm", max(idle, key=lambda i: (i.last_used_s, i.instance_id))
            room, others, extra_ms = target.capacity - target.inflight, running, 0.0
        else:
            kind, room, others, extra_ms = "start", cap, running, self.model.cold_start_ms(key)
        tokens = max(r.prompt_tokens for r in queue[:room])
        contention = 1.0 + self.config.contention_penalty * others

        def est_ms(b: int) -> float:
            return extra_ms + self.model.estimate_ms(key, tokens, b) * contention
        slack_ms = (self._deadline_s(queue[0]) - now) * 1000
        if est_ms(1) > slack_ms + _EPS_MS:
            b_max = room    # the SLO is lost already: throughput first
        else:
            b_max = max(b for b in range(1, room + 1) if est_ms(b) <= slack_ms + _EPS_MS)
        n = len(queue)
        b = min(n, b_max)
        hold_until = self._deadline_s(queue[0]) - est_ms(n) / 1000
        expecting = self._rate_per_s(key, now) * (hold_until - now) >= 1.0
        if kind == "start" and any(i.alive for i in mine):
            # scale out for a full batch, or once the slack runs out if a new instance can meet this SLO at all
            # (else the instances it has, one of them maybe starting, will be ready sooner than a new one)
            ready = n >= cap or (now >= hold_until and est_ms(1) <= self._slo_ms(queue[0]))
        else:
            ready = kind == "join" or n >= b_max or now >= hold_until or not expecting
        return _Candidate(key, tuple(queue[:b]), kind, target.instance_id if target else None,
                          slack_ms - est_ms(b), ready, hold_until)

    def _dispatch(self, c: _Candidate, others: int) -> None:
        self._take(c.key, len(c.batch))
        contention = 1.0 + self.config.contention_penalty * max(0, others)
        for r in c.batch:
            self._dispatched[r.request_id] = _Dispatch(c.key, r.prompt_tokens, self._slo_ms(r),
                                                       self.limit.dispatched(), contention)
        self.fairness.charge(c.key, sum(max(1, r.prompt_tokens) for r in c.batch))

    def _next_deadline(self, view: list[InstanceView], now: float) -> float | None:
        times = [r.arrival_s + self.config.max_queue_s for q in self._queues.values() for r in q]
        running = sum(1 for i in view if i.alive and i.inflight > 0)
        for key, queue in self._queues.items():
            c = self._candidate(key, queue, view, running, now)
            if not c.ready and c.hold_until_s > now:   # past it, only an arrival or an end changes anything
                times.append(c.hold_until_s)
        return min(times) if times else None
