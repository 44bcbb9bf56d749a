"""A function instance: one sandbox running the runtime, as an explicit state machine.

STARTING ─first /next─▶ IDLE ◀─▶ BUSY        any live state ─stop─▶ STOPPING ─▶ STOPPED
    │                     │        │
    └──init error/exit────┴────────┴──▶ FAILED ─▶ STOPPED

The dispatcher reserves an instance for a request (IDLE→BUSY; an instance started for a
request is born reserved, so its init ends in BUSY); the instance is BUSY while any request
reserved on it is unfinished, up to ``capacity`` at once. Everything else moves from the
runtime's API calls and from the sandbox's exit.
"""
from __future__ import annotations

import json
import logging
import queue
import signal
import threading
import time
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Callable

from slfaas.gpu_node.sandboxes.base import Sandbox
from slfaas.gpu_node.types import FunctionSpec, InvocationRequest
from slfaas.runtime_contract import MAX_RESPONSE_BYTES, Delivery

log = logging.getLogger(__name__)


class InstanceState(str, Enum):
    STARTING = "STARTING"
    IDLE = "IDLE"
    BUSY = "BUSY"
    STOPPING = "STOPPING"
    STOPPED = "STOPPED"
    FAILED = "FAILED"


_ALLOWED = {
    InstanceState.STARTING: {InstanceState.IDLE, InstanceState.BUSY, InstanceState.FAILED, InstanceState.STOPPING},
    InstanceState.IDLE: {InstanceState.BUSY, InstanceState.FAILED, InstanceState.STOPPING},
    InstanceState.BUSY: {InstanceState.IDLE, InstanceState.FAILED, InstanceState.STOPPING},
    InstanceState.FAILED: {InstanceState.STOPPING, InstanceState.STOPPED},
    InstanceState.STOPPING: {InstanceState.STOPPED},
    InstanceState.STOPPED: set(),
}
_LIVE = (InstanceState.STARTING, InstanceState.IDLE, InstanceState.BUSY)


class IllegalTransition(RuntimeError):
    pass


@dataclass
class Outcome:
    """How one invocation ended inside an instance."""

    payload: bytes
    error_type: str | None  # None: success
    delivered_ts: float | None = None
    metrics: dict | None = None   # what the runtime reported beside the body (device time, usage, ttft)
    from_runtime: bool = False    # posted by the runtime (which wrote its log sync marker first)


@dataclass
class _Call:
    request: InvocationRequest
    cold_start: bool
    submitted_ts: float
    deadline_ts: float
    done: threading.Event = field(default_factory=threading.Event)
    outcome: Outcome | None = None
    delivered_ts: float | None = None
    # A streamed response: each chunk goes to ``sink`` as it arrives (InvokeWithResponseStream),
    # or is kept in ``chunks`` and becomes the payload (a buffered invoke).
    sink: Callable[[bytes], None] | None = None
    chunks: list[bytes] = field(default_factory=list)
    buffered_bytes: int = 0


def error_payload(error_type: str, message: str) -> bytes:
    return json.dumps({"errorMessage": message, "errorType": error_type, "stackTrace": []}).encode()


def describe_exit(code: int | None) -> str:
    if code is None:
        return "Runtime exited without providing a reason"
    if code < 0:
        try:
            return f"Runtime exited with error: signal: {signal.Signals(-code).name}"
        except ValueError:
            return f"Runtime exited with error: signal {-code}"
    return f"Runtime exited with error: exit status {code}"


class Instance:
    def __init__(self, instance_id: str, function: FunctionSpec, reserved_for: str | None = None,
                 capacity: int = 1, riders: tuple[str, ...] = ()):
        """``reserved_for``: the request this instance is started for; its init then ends in
        BUSY, so no other caller can take the instance before that request runs. ``riders``:
        more requests of the same batch, reserved on it from the start too."""
        self.instance_id = instance_id
        self.function = function
        self.capacity = capacity
        self.provisioned = False        # held for provisioned concurrency (set by the provisioner)
        self.state = InstanceState.STARTING
        self.started_ts = time.time()
        self.last_used_ts = self.started_ts
        self.invocations = 0
        self.init_duration_ms: float | None = None
        self.init_error: Outcome | None = None
        self.init_facts: dict = {}      # the runtime's own account of its init (phases, bytes)
        self.sandbox: Sandbox | None = None
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._queue: queue.Queue[_Call | None] = queue.Queue()
        self._reserved: set[str] = ({reserved_for} if reserved_for else set()) | set(riders)
        self._calls: dict[str, _Call] = {}    # handed to the runtime (queued or delivered), not finished
        self._ended: set[str] = set()          # finished calls whose requests still hold their place
        self.failed_deliveries = 0             # /next answers the runtime was gone to receive
        self._log_synced = threading.Condition()
        self._log_synced_requests: set[str] = set()   # output up to their response is in the log
        self._adapters: dict[str, Path] = {}    # a shared runtime's: adapter id → its function's code

    # state machine
    def _move(self, new: InstanceState) -> None:
        """Caller holds ``_lock``."""
        if new not in _ALLOWED[self.state]:
            raise IllegalTransition(f"{self.instance_id}: {self.state.value} → {new.value}")
        log.debug("instance %s: %s → %s", self.instance_id, self.state.value, new.value)
        self.state = new

    def reserve(self, request_id: str) -> bool:
        """Take a place for ``request_id``; False if the instance is not serving or full."""
        with self._lock:
            if self.state not in (InstanceState.IDLE, InstanceState.BUSY) or len(self._reserved) >= self.capacity:
                return False
            if self.state is InstanceState.IDLE:
                self._move(InstanceState.BUSY)
            self._reserved.add(request_id)
            return True

    def claim_idle(self) -> bool:
        """IDLE → STOPPING for whoever stops it (keep-alive, eviction, retirement); False if it
        is not idle any more. The runtime is not told: the launcher's stop signals it."""
        with self._lock:
            if self.state is not InstanceState.IDLE or self._reserved:
                return False
            self._move(InstanceState.STOPPING)
        return True

    def release(self, request_id: str) -> None:
        with self._lock:
            self._reserved.discard(request_id)
            self._ended.discard(request_id)
            self.last_used_ts = time.time()
            if self.state is InstanceState.BUSY and not self._reserved:
                self._move(InstanceState.IDLE)

    @property
    def alive(self) -> bool:
        return self.state in _LIVE

    @property
    def inflight(self) -> int:
        return len(self._reserved)

    def undelivered(self) -> int:
        """Calls handed to this instance that its runtime has not taken yet (queued in it)."""
        with self._lock:
            return sum(1 for c in self._calls.values() if c.delivered_ts is None and not c.done.is_set())

    def holds(self, request_id: str) -> bool:
        with self._lock:
            return request_id in self._reserved

    # node side
    def wait_ready(self, timeout_s: float) -> bool:
        """Wait for init to finish; True when the runtime asked for its first invocation."""
        self._ready.wait(timeout_s)
        return self._ready.is_set() and self.init_error is None and self.alive

    def run(self, request: InvocationRequest, cold_start: bool, submitted_ts: float,
            sink: Callable[[bytes], None] | None = None) -> tuple[Outcome, _Call]:
        """Hand one invocation to the runtime and wait for its end (response, error, exit, timeout).
        ``sink`` receives the chunks of a streamed response as they arrive."""
        now = time.time()
        call = _Call(request, cold_start, submitted_ts, now + request.function.timeout_s, sink=sink)
        with self._lock:
            if not self.alive:
                return Outcome(error_payload("Runtime.ExitError", "instance is not running"), "Runtime.ExitError"), call
            self._calls[request.request_id] = call
            self.invocations += 1
            if request.function.shared_execution:   # the shared runtime may fetch this adapter now
                self._adapters[request.function.adapter_id] = Path(request.function.code_dir)
        self._queue.put(call)
        if not call.done.wait(request.function.timeout_s):
            self._finish(call, Outcome(
                error_payload("Sandbox.Timedout",
                              f"Task timed out after {request.function.timeout_s:.2f} seconds"),
                "Sandbox.Timedout"))
            self.fail_and_kill()
        assert call.outcome is not None
        return call.outcome, call

    def cancel(self, request_id: str, outcome: Outcome) -> bool | None:
        """End a request's call now with ``outcome`` (its caller has gone); the runtime may be
        mid-work on it, so the instance is killed: a function must not keep burning the device
        for nobody. Unless it holds other calls (a batch): their callers are still there, and
        the runtime's late answer for this one is refused. False: the call already ended
        (nothing to stop); None: no such call was handed to this instance (yet)."""
        with self._lock:
            call = self._calls.get(request_id)
            ended = request_id in self._ended
        if call is None:
            return False if ended else None
        if not self._finish(call, outcome):
            return False
        with self._lock:
            others = bool(self._calls)
        if not others:
            self.fail_and_kill()
        return True

    def log_synced(self, request_id: str) -> None:
        """The runtime's output up to its response to ``request_id`` is in the log."""
        with self._log_synced:
            self._log_synced_requests.add(request_id)
            self._log_synced.notify_all()

    def wait_log_synced(self, request_id: str, timeout_s: float) -> bool:
        with self._log_synced:
            synced = self._log_synced.wait_for(lambda: request_id in self._log_synced_requests, timeout_s)
            self._log_synced_requests.discard(request_id)
            return synced

    def fail_and_kill(self) -> None:
        with self._lock:
            if self.alive:
                self._move(InstanceState.FAILED)
        if self.sandbox is not None:
            self.sandbox.kill()

    def _finish(self, call: _Call, outcome: Outcome) -> bool:
        with self._lock:
            if call.done.is_set():
                return False
            outcome.delivered_ts = call.delivered_ts
            call.outcome = outcome
            self._calls.pop(call.request.request_id, None)
            if call.request.request_id in self._reserved:
                self._ended.add(call.request.request_id)
            call.done.set()
            return True

    def on_exit(self, code: int | None) -> None:
        """Called by the launcher's watcher when the sandbox process ends."""
        reason = describe_exit(code)
        with self._lock:
            calls = list(self._calls.values())
            if self.state in _LIVE:
                self._move(InstanceState.FAILED)
                if self.init_error is None and not self._ready.is_set():
                    self.init_error = Outcome(error_payload("Runtime.ExitError", reason), "Runtime.ExitError")
        self._ready.set()
        for call in calls:
            self._finish(call, Outcome(error_payload("Runtime.ExitError", reason), "Runtime.ExitError"))
        self._queue.put(None)  # wake a blocked /next so its handler thread ends

    def begin_stop(self, wake: bool = True) -> bool:
        """Any live state → STOPPING (no more work). ``wake``: a waiting ``/next`` answers 410 at
        once; the launcher, which signals the sandbox itself, wakes it only after the signal."""
        with self._lock:
            if self.state in (InstanceState.STOPPING, InstanceState.STOPPED):
                return False
            self._move(InstanceState.STOPPING)
        if wake:
            self.wake()
        return True

    def wake(self) -> None:
        """End a ``/next`` that waits for work (the instance is stopping or gone)."""
        self._queue.put(None)

    def mark_stopped(self) -> None:
        with self._lock:
            if self.state is InstanceState.FAILED:
                self._move(InstanceState.STOPPING)
            if self.state is InstanceState.STOPPING:
                self._move(InstanceState.STOPPED)

    # runtime side (RuntimeEndpoint)
    def next_delivery(self) -> Delivery | None:
        with self._lock:
            if self.state is InstanceState.STARTING:
                self.init_duration_ms = (time.time() - self.started_ts) * 1000
                self._move(InstanceState.BUSY if self._reserved else InstanceState.IDLE)
                self._ready.set()
        while True:
            call = self._queue.get()
            if call is None:
                self._queue.put(None)   # a batching runtime waits on /next from several threads: wake them all
                return None
            with self._lock:
                if call.done.is_set():  # timed out or cancelled before delivery
                    continue
                call.delivered_ts = time.time()
            return Delivery(
                request_id=call.request.request_id,
                payload=call.request.payload,
                deadline_ms=int(call.deadline_ts * 1000),
                function_arn=call.request.function.arn,
                client_context=call.request.client_context,
                cold_start=call.cold_start,
                queue_ms=(call.delivered_ts - call.submitted_ts) * 1000,
                response_stream=call.request.response_stream,
                adapter_id=call.request.function.adapter_id if call.request.function.shared_execution else None,
            )

    def adapter_dir(self, adapter_id: str) -> Path | None:
        """The code of a function whose invocation was handed to this (shared) instance: the
        only adapters its runtime may fetch."""
        with self._lock:
            return self._adapters.get(adapter_id)

    def delivery_failed(self, request_id: str) -> None:
        """The runtime did not receive what ``/next`` handed it (its connection was gone)."""
        with self._lock:
            self.failed_deliveries += 1
            call = self._calls.get(request_id)
            if call is not None and not call.done.is_set():
                call.delivered_ts = None

    def _call(self, request_id: str) -> _Call | None:
        with self._lock:
            return self._calls.get(request_id)

    def complete(self, request_id: str, body: bytes, error_type: str | None, *, streamed: bool = False,
                 metrics: dict | None = None) -> bool:
        call = self._call(request_id)
        if call is None:
            return False
        if streamed and error_type is None:
            body = b"".join(call.chunks)  # empty when a sink took the chunks
        return self._finish(call, Outcome(body, error_type, metrics=metrics, from_runtime=True))

    def stream_chunk(self, request_id: str, data: bytes) -> bool:
        """One chunk of a streamed response, handed on at once; False once the call is over."""
        with self._lock:
            call = self._calls.get(request_id)
            if call is None or call.done.is_set():
                return False
            if call.sink is not None:
                call.sink(data)   # must not block: the sink is a queue's put
                return True
            call.chunks.append(data)
            call.buffered_bytes += len(data)
            if call.buffered_bytes <= MAX_RESPONSE_BYTES:
                return True
        # a buffered invoke has Lambda's 6 MB response limit, streamed or not
        self._finish(call, Outcome(error_payload(
            "Function.ResponseSizeTooLarge", f"Response payload size exceeded maximum allowed payload size "
            f"({MAX_RESPONSE_BYTES} bytes)."), "Function.ResponseSizeTooLarge"))
        return False

    def init_report(self, report: dict) -> None:
        with self._lock:
            self.init_facts = {k: v for k, v in report.items() if isinstance(v, (int, float, str))}

    def init_failed(self, body: bytes, error_type: str) -> None:
        with self._lock:
            self.init_error = Outcome(body, error_type)
            if self.alive:
                self._move(InstanceState.FAILED)
        self._ready.set()
