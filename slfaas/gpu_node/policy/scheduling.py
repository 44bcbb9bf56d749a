"""Request scheduling, in the shape of vLLM's scheduler: requests are added, ``schedule`` turns a
node snapshot into decisions, ``update`` hears what finished. No threads, clocks or IO: the
dispatcher (the mechanism) owns those and applies the decisions.

``FcfsScheduler``: first come, first served, no waiting: a request that cannot be placed now
is refused (429), as a Lambda function at its concurrency limit. ``SloScheduler``
(``slo_scheduler.py``) queues requests per function and forms batches against their TTFT SLOs.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Protocol, Sequence

from slfaas.gpu_node.policy.placement import Refuse, Reuse, place
from slfaas.gpu_node.policy.view import InstanceView, NodeSnapshot, PoolKey


@dataclass(frozen=True)
class PendingRequest:
    request_id: str
    key: PoolKey
    arrival_s: float
    slo_ms: float | None = None     # the function's TTFT SLO; None: the scheduler's default
    capacity: int = 1               # requests one instance of the function holds at once
    prompt_tokens: int = 0          # an estimate from the payload (the latency model's bucket)


@dataclass(frozen=True)
class Assign:
    request_id: str
    instance_id: str


@dataclass(frozen=True)
class StartFor:
    """Start a new instance for this request, after stopping ``evict``; ``riders``: requests
    of the same batch, reserved on the new instance too (it runs them once it is ready)."""

    request_id: str
    evict: tuple[str, ...] = ()
    riders: tuple[str, ...] = ()


@dataclass(frozen=True)
class RefuseRequest:
    request_id: str
    reason: str
    message: str
    retry_after_s: float | None = None   # when a retry may succeed (the 429's Retry-After)


@dataclass(frozen=True)
class SchedulerOutput:
    assign: tuple[Assign, ...] = ()
    start: tuple[StartFor, ...] = ()
    refuse: tuple[RefuseRequest, ...] = ()


@dataclass(frozen=True)
class Finished:
    """A request's end, with what the node measured of it (None: not measured)."""

    request_id: str
    instance_id: str
    ok: bool
    batch_size: int = 1                 # the most requests one forward pass of it held
    prompt_tokens: int | None = None
    ttft_ms: float | None = None        # the runtime's: delivery to its first token
    queue_ms: float | None = None       # the node's: arrival to delivery (waiting, cold start)
    init_ms: float | None = None        # the instance's init, when this request started it


class Scheduler(Protocol):
    def add_request(self, request: PendingRequest) -> None: ...

    def abort(self, request_id: str) -> bool:
        """Drop a request that was not scheduled yet; False if it is not waiting."""
        ...

    def schedule(self, snapshot: NodeSnapshot) -> SchedulerOutput: ...

    def update(self, finished: Sequence[Finished]) -> None: ...

    def waiting_keys(self) -> frozenset[PoolKey]: ...

    def next_deadline_s(self) -> float | None:
        """The clock value at which ``schedule`` should run again though nothing happened (a
        held batch's slack runs out, a queued request reaches its time bound); None: never."""
        ...


def _with(snapshot: NodeSnapshot, instances: list[InstanceView]) -> NodeSnapshot:
    return replace(snapshot, instances=tuple(instances))


class FcfsScheduler:
    def __init__(self) -> None:
        self._waiting: OrderedDict[str, PendingRequest] = OrderedDict()   # arrival order

    def add_request(self, request: PendingRequest) -> None:
        self._waiting[request.request_id] = request

    def abort(self, request_id: str) -> bool:
        return self._waiting.pop(request_id, None) is not None

    def waiting_keys(self) -> frozenset[PoolKey]:
        return frozenset(r.key for r in self._waiting.values())

    def update(self, finished: Sequence[Finished]) -> None:
        """Nothing to learn: FCFS keeps no estimates."""

    def next_deadline_s(self) -> float | None:
        return None   # nothing ever waits

    def schedule(self, snapshot: NodeSnapshot) -> SchedulerOutput:
        assign: list[Assign] = []
        start: list[StartFor] = []
        refuse: list[RefuseRequest] = []
        view = list(snapshot.instances)
        while self._waiting:
            _rid, req = self._waiting.popitem(last=False)
            waiting = frozenset(r.key for r in self._waiting.values())
            decision = place(replace(_with(snapshot, view), waiting_keys=waiting), req.key)
            if isinstance(decision, Refuse):
                refuse.append(RefuseRequest(req.request_id, decision.reason, decision.message))
            elif isinstance(decision, Reuse):
                assign.append(Assign(req.request_id, decision.instance_id))
                view = [replace(i, state="BUSY", inflight=i.inflight + 1) if i.instance_id == decision.instance_id
                        else i for i in view]
            else:
                start.append(StartFor(req.request_id, decision.evict))
                view = [replace(i, state="STOPPING") if i.instance_id in decision.evict else i for i in view]
                view.append(InstanceView(f"new:{req.request_id}", req.key, "STARTING", snapshot.now_s, inflight=1))
        return SchedulerOutput(tuple(assign), tuple(start), tuple(refuse))
