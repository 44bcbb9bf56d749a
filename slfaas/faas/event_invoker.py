"""Asynchronous invocations (``InvocationType=Event``): accepted with 202, stored, and run in
the background by a few workers, with Lambda's retries (``EventRetryPolicy``).

Each event is a row in the registry with its payload, so a restarted server resumes the
events it had not finished; the invocation record (``/slfaas/v1/invocations/ID``) shows the
last attempt, and the event row its attempts and the result of the last one.
"""
from __future__ import annotations

import heapq
import itertools
import json
import logging
import threading
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Callable

from slfaas.errors import NotFound, TooManyRequests
from slfaas.faas.registry import FunctionRecord, InvocationRecord
from slfaas.faas.registry_settings import PENDING_EVENT_STATES, EventRecord
from slfaas.faas.retry_policy import EventRetryPolicy
from slfaas.gpu_node.types import InvocationRequest

if TYPE_CHECKING:
    from slfaas.faas.service import FunctionService

log = logging.getLogger(__name__)


class EventQueue:
    """Request ids ordered by due time, served by worker threads."""

    def __init__(self, handle: Callable[[str], None], workers: int = 4):
        self._handle = handle
        self._heap: list[tuple[float, int, str]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._closed = False
        self._threads = [threading.Thread(target=self._work, daemon=True, name=f"event-worker-{i}")
                         for i in range(workers)]
        for t in self._threads:
            t.start()

    def submit(self, request_id: str, due_ts: float) -> None:
        with self._cond:
            heapq.heappush(self._heap, (due_ts, next(self._seq), request_id))
            self._cond.notify()

    def pending(self) -> int:
        with self._cond:
            return len(self._heap)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def _next(self) -> str | None:
        with self._cond:
            while not self._closed:
                now = time.time()
                if self._heap and self._heap[0][0] <= now:
                    return heapq.heappop(self._heap)[2]
                self._cond.wait(None if not self._heap else self._heap[0][0] - now)
            return None

    def _work(self) -> None:
        while (request_id := self._next()) is not None:
            try:
                self._handle(request_id)
            except Exception:
                log.exception("asynchronous invocation %s failed in the event worker", request_id)


class EventInvoker:
    def __init__(self, svc: "FunctionService", policy: EventRetryPolicy | None = None, workers: int = 4):
        self.svc = svc
        self.registry = svc.registry
        self.policy = policy or EventRetryPolicy.from_env()
        self.queue = EventQueue(self._attempt, workers)

    def resume(self) -> int:
        """Queue again the events a previous server run accepted and did not finish."""
        pending = self.registry.pending_events()
        for ev in pending:
            self.queue.submit(ev.request_id, ev.next_attempt_ts)
        return len(pending)

    def enqueue(self, request_id: str, rec: FunctionRecord, invoked_arn: str, payload: bytes,
                client_context: str | None) -> None:
        now = time.time()
        self.registry.record_invocation(InvocationRecord(
            request_id=request_id, function_name=rec.name, version=rec.version, status="queued", start_ts=now,
            code_sha256_hex=rec.code_sha256_hex))
        self.registry.insert_event(EventRecord(
            request_id=request_id, function_name=rec.name, version=rec.version, invoked_arn=invoked_arn,
            payload=payload, client_context=client_context, status="queued", attempts=0, throttles=0,
            enqueued_ts=now, next_attempt_ts=now))
        self.queue.submit(request_id, now)

    def _attempt(self, request_id: str) -> None:
        ev = self.registry.get_event(request_id)
        if ev.status not in PENDING_EVENT_STATES:
            return
        try:
            rec = self.registry.get_function(ev.function_name, ev.version)
        except NotFound:
            self._give_up(ev, "dropped", "ResourceNotFoundException", "the function version was deleted")
            return
        if rec.state != "Active":
            self._throttled(ev, "the function is not Active")
            return
        spec = replace(self.svc.spec(rec), arn=ev.invoked_arn or self.svc.spec(rec).arn)
        request = InvocationRequest(request_id, spec, ev.payload, ev.client_context)
        ev = self.registry.update_event(request_id, status="running", attempts=ev.attempts + 1)
        try:
            record = self.registry.get_invocation(request_id)
        except NotFound:
            record = InvocationRecord(request_id=request_id, function_name=rec.name, version=rec.version,
                                      status="running", start_ts=time.time())
        record = replace(record, status="running", start_ts=time.time(), code_sha256_hex=rec.code_sha256_hex)
        self.registry.record_invocation(record)
        try:
            result = self.svc._run(request, record)
        except TooManyRequests as exc:
            self.registry.update_event(request_id, attempts=ev.attempts - 1)  # never reached the function
            self._throttled(self.registry.get_event(request_id), str(exc))
            return
        except Exception as exc:  # the node failed: retried like a function error
            payload = json.dumps({"errorMessage": str(exc), "errorType": exc.__class__.__name__,
                                  "stackTrace": []}).encode()
            self._after_error(ev, payload, exc.__class__.__name__)
            return
        if result.function_error is None:
            self.registry.update_event(request_id, status="success", result=result.payload, function_error="",
                                       error_type="")
            return
        self._after_error(ev, result.payload, result.error_type, result.function_error)

    def _after_error(self, ev: EventRecord, payload: bytes, error_type: str, function_error: str = "Unhandled") -> None:
        now = time.time()
        delay = self.policy.after_error(ev.attempts, ev.enqueued_ts, now)
        if delay is None:
            self.registry.update_event(ev.request_id, status="function_error", result=payload,
                                       function_error=function_error, error_type=error_type)
            log.info("event %s of %s failed after %d attempt(s): %s", ev.request_id, ev.function_name,
                     ev.attempts, error_type)
            return
        self.registry.update_event(ev.request_id, status="retrying", result=payload, function_error=function_error,
                                   error_type=error_type, next_attempt_ts=now + delay)
        self.queue.submit(ev.request_id, now + delay)

    def _throttled(self, ev: EventRecord, why: str) -> None:
        now = time.time()
        throttles = ev.throttles + 1
        delay = self.policy.after_throttle(throttles, ev.enqueued_ts, now)
        if delay is None:
            self._give_up(ev, "expired", "TooManyRequestsException",
                          f"the event reached its maximum age while throttled ({why})")
            return
        self.registry.update_event(ev.request_id, status="retrying", throttles=throttles, next_attempt_ts=now + delay,
                                   error_type="TooManyRequestsException")
        self.queue.submit(ev.request_id, now + delay)

    def _give_up(self, ev: EventRecord, status: str, error_type: str, message: str) -> None:
        self.registry.update_event(ev.request_id, status=status, error_type=error_type)
        try:
            record = self.registry.get_invocation(ev.request_id)
            self.registry.finish_invocation(record, status=status, end_ts=time.time(), error_type=error_type,
                                            error_message=message)
        except NotFound:
            pass
        log.warning("event %s of %s %s: %s", ev.request_id, ev.function_name, status, message)

    def details(self, request_id: str) -> dict | None:
        """The event's attempts and last result, for the invocation record endpoint."""
        try:
            ev = self.registry.get_event(request_id)
        except NotFound:
            return None
        result: object = None
        if ev.result is not None:
            try:
                result = json.loads(ev.result)
            except ValueError:
                result = ev.result.decode("utf-8", "replace")
        return {"InvocationType": "Event", "Status": ev.status, "Attempts": ev.attempts, "Throttles": ev.throttles,
                "EnqueuedTs": ev.enqueued_ts, "NextAttemptTs": ev.next_attempt_ts if ev.status == "retrying" else None,
                "FunctionError": ev.function_error or None, "ErrorType": ev.error_type or None, "Result": result}
