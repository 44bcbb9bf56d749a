"""What happens on a node, as events: billing, metrics and the registry subscribe.

The node publishes; it never calls the meter (or anything else that observes it) directly.
Subscribers run synchronously in the publishing thread, in subscription order; a failing
subscriber is logged and never fails the node's work. A subscriber may answer an event: the
answers come back from ``publish`` (the meter answers ``InvocationEnded`` with the usage record
that the REPORT line shows).
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from slfaas.gpu_node.types import IntegrityEvent

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NodeEvent:
    ts: float


@dataclass(frozen=True)
class BackbonesChanged(NodeEvent):
    count: int
    largest_bytes: int
    largest_load_s: float


@dataclass(frozen=True)
class InstanceStarting(NodeEvent):
    instance_id: str
    function_name: str
    version: str = ""
    memory_mb: int = 0


@dataclass(frozen=True)
class InstanceMeasured(NodeEvent):
    """The device memory an instance holds, after its first invocation: measured (NVML), or
    the node's admission estimate where it cannot be measured (``measured`` False)."""

    instance_id: str
    device_mb: float
    measured: bool


@dataclass(frozen=True)
class InstanceReady(NodeEvent):
    """Init ended (ready, failed or abandoned)."""

    instance_id: str
    init_wall_s: float | None


@dataclass(frozen=True)
class InstanceIdle(NodeEvent):
    """Idle and held; published again when its ``provisioned`` flag changes while idle."""

    instance_id: str
    function_name: str
    provisioned: bool = False   # held for provisioned concurrency: billed to the function


@dataclass(frozen=True)
class InstancePrestarted(NodeEvent):
    """The init of an instance started ahead of any request (pre-warmed by keep-alive, or
    provisioned) ended, after its ``InstanceReady``: no invocation pays for it."""

    instance_id: str
    function_name: str
    provisioned: bool
    ok: bool


@dataclass(frozen=True)
class InstanceGone(NodeEvent):
    instance_id: str


@dataclass(frozen=True)
class FunctionPrepared(NodeEvent):
    """A function (version) became Active on this node: it may be invoked from now on."""

    function_name: str
    version: str
    base_model: str
    code_dir: str


@dataclass(frozen=True)
class InvocationSubmitted(NodeEvent):
    """A request reached the node (before it is placed): the preloader's arrival rates."""

    request_id: str
    function_name: str
    version: str
    base_model: str
    code_dir: str


@dataclass(frozen=True)
class InvocationStarted(NodeEvent):
    request_id: str
    instance_id: str


@dataclass(frozen=True)
class InvocationAborted(NodeEvent):
    """Ended without ``InvocationEnded`` (an exception in the node); a no-op once it ended."""

    request_id: str


@dataclass(frozen=True)
class InvocationEnded(NodeEvent):
    request_id: str
    function_name: str
    version: str
    memory_mb: int
    instance_id: str
    cold_start: bool
    preloaded: bool             # the instance came from a warm pool of pre-started runtimes
    submitted_ts: float
    dispatch_ts: float
    error_type: str | None
    payload: bytes
    metrics: Mapping[str, object] | None
    init_facts: Mapping[str, object]
    batch_size: int = 1         # the most invocations one forward pass of it held (runtime's, ≤ capacity)
    delivered_ts: float | None = None   # when the runtime took it from /next
    runtime_source: str = ""    # a cold start's: "prewarmed", "pool" or "cold"
    adapter_source: str = ""    # a cold start's: "host" or "disk"


@dataclass(frozen=True)
class IntegrityChecked(NodeEvent):
    event: IntegrityEvent


Subscriber = Callable[[NodeEvent], Any]


class EventBus:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subscribers: tuple[Subscriber, ...] = ()

    def subscribe(self, subscriber: Subscriber) -> None:
        with self._lock:
            self._subscribers = (*self._subscribers, subscriber)

    def publish(self, event: NodeEvent) -> list[Any]:
        answers = []
        for sub in self._subscribers:   # a tuple replaced whole: no lock needed to read it
            try:
                answer = sub(event)
            except Exception:
                log.exception("node event subscriber failed on %s", type(event).__name__)
                continue
            if answer is not None:
                answers.append(answer)
        return answers
