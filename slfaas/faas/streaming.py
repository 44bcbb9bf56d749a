"""InvokeWithResponseStream on the control plane: the invocation's response as it is produced.

Everything that can refuse the request (unknown function, not Active, payload too large or not
JSON, no capacity) raises before the first byte, so it becomes an ordinary AWS error response;
after that the response is 200 and a failure of the function arrives at the end of the stream
(``InvokeComplete.ErrorCode``), as on AWS.
"""
from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from contextlib import ExitStack
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Iterator

from slfaas.errors import InvalidParameter, TooManyRequests
from slfaas.faas.registry import InvocationRecord
from slfaas.faas.function_config import opt_float, opt_int
from slfaas.faas.service import CANCELLED_MESSAGE, check_log_type
from slfaas.gpu_node.types import InvocationRequest, InvocationResult

if TYPE_CHECKING:
    from slfaas.faas.service import FunctionService
    from slfaas.gpu_node.api import NodeStream

log = logging.getLogger(__name__)

MAX_STREAM_PAYLOAD_BYTES = 6 * 1024 * 1024
LOG_SCAN_BYTES = 1 << 20     # how much of the function's log to search for the invocation's lines


@dataclass
class StreamEnd:
    """How a streamed invocation ended (known once its chunks are exhausted)."""

    error_code: str | None = None       # the function's errorType, e.g. Runtime.ExitError
    error_details: str | None = None    # its errorMessage
    log_result: str | None = None       # LogType=Tail: base64 of the invocation's last 4 KB of log
    result: InvocationResult | None = None


class StreamingInvocation:
    """The chunks of one streaming invocation; ``end`` is filled in when iteration finishes.
    Iterate it once (the HTTP response does); closed early (client gone), the invocation is
    still recorded when it ends."""

    def __init__(self, service: "FunctionService", record: InvocationRecord, node_stream: "NodeStream",
                 executed_version: str, request_id: str, lease: ExitStack | None = None, log_tail: bool = False):
        self._service = service
        self._record = record
        self._node_stream = node_stream
        self._lease = lease or ExitStack()
        self._log_tail = log_tail
        self.executed_version = executed_version
        self.request_id = request_id
        self.end = StreamEnd()
        self._cancelled = False

    def __iter__(self) -> Iterator[bytes]:
        finished = False
        try:
            yield from self._node_stream
            finished = True
        finally:
            if finished:
                self._record_end()
            else:  # the client went away: stop the function's work, record the invocation when it ends
                self._cancelled = self._service.node.cancel(self.request_id)
                threading.Thread(target=self._drain_and_record, daemon=True,
                                 name=f"stream-drain-{self.request_id[:8]}").start()

    def _drain_and_record(self) -> None:
        for _chunk in self._node_stream:
            pass
        self._record_end()

    def _record_end(self) -> None:
        self._lease.close()   # the invocation is over: its concurrency slot is free again
        stream = self._node_stream
        registry = self._service.registry
        if stream.result is None:
            exc = stream.error
            self.end.error_code = "ServiceException"
            self.end.error_details = f"{exc.__class__.__name__}: {exc}" if exc is not None else "no result"
            registry.finish_invocation(self._record, status="failed", end_ts=time.time(),
                                       error_type=self.end.error_code, error_message=self.end.error_details)
            return
        result = stream.result
        self.end.result = result
        message = ""
        if result.function_error:
            try:
                body = json.loads(result.payload)
                message = str(body.get("errorMessage", "")) if isinstance(body, dict) else ""
            except ValueError:
                message = ""
            self.end.error_code = result.error_type or "Unhandled"
            self.end.error_details = message or result.payload.decode("utf-8", "replace")[:4096]
        if self._log_tail:
            from slfaas.faas.log_tail import invocation_log, log_result_header
            text = self._service.node.logs(self._record.function_name, LOG_SCAN_BYTES).text
            self.end.log_result = log_result_header(invocation_log(text, self.request_id, result.instance_id))
        metrics = result.metrics or {}
        status = "success" if result.function_error is None else "function_error"
        if self._cancelled:
            status, message = "cancelled", f"{CANCELLED_MESSAGE} {message}".strip()
        registry.finish_invocation(
            self._record, status=status,
            instance_id=result.instance_id, end_ts=result.end_ts, duration_ms=result.duration_ms,
            init_duration_ms=result.init_duration_ms, queue_ms=result.queue_ms, cold_start=result.cold_start,
            error_type=result.error_type, error_message=message[:2000],
            prompt_tokens=opt_int(metrics.get("prompt_tokens")),
            completion_tokens=opt_int(metrics.get("completion_tokens")),
            ttft_ms=opt_float(metrics.get("ttft_ms")))


def start_stream(service: "FunctionService", ref: str, qualifier: str | None, payload: bytes,
                 invocation_type: str = "RequestResponse", client_context: str | None = None,
                 log_type: str | None = None) -> StreamingInvocation | None:
    """Validate and start; None for ``DryRun`` (validated, nothing run). The function's
    reserved concurrency is held from here until the stream ends, as for a buffered invoke."""
    if invocation_type not in ("RequestResponse", "DryRun"):
        raise InvalidParameter(f"Unsupported InvocationType for InvokeWithResponseStream: {invocation_type}. "
                               f"Valid values are RequestResponse and DryRun.")
    if invocation_type == "DryRun":
        service.invocation_target(ref, qualifier, payload, log_type, MAX_STREAM_PAYLOAD_BYTES,
                                  "InvokeWithResponseStream")
        return None
    check_log_type(log_type)   # the free check before the slot, as for a buffered invoke
    lease = ExitStack()
    # the API-wide bound on invocations: 429 at once beyond it, before any registry work
    lease.enter_context(service.slots.slot())
    try:
        # an alias's routing draws the version
        rec, invoked_arn = service.invocation_target(ref, qualifier, payload, log_type, MAX_STREAM_PAYLOAD_BYTES,
                                                     "InvokeWithResponseStream")
        request_id = str(uuid.uuid4())
        request = InvocationRequest(request_id, replace(service.spec(rec), arn=invoked_arn), payload or b"{}",
                                    client_context, response_stream=True)
        record = InvocationRecord(request_id=request_id, function_name=rec.name, version=rec.version,
                                  status="running", start_ts=time.time(), code_sha256_hex=rec.code_sha256_hex)
        service.registry.record_invocation(record)
    except BaseException:
        lease.close()
        raise
    try:
        service.cost.admit(rec.name, request_id)                      # hard budgets, enforced
        lease.callback(service.cost.release, request_id)              # no-op once billed
        lease.enter_context(service.limits.tracker.lease(rec.name))   # reserved concurrency, enforced
        node_stream = service.node.invoke_stream(request)
    except BaseException as exc:
        lease.close()
        service.registry.finish_invocation(
            record, status="throttled" if isinstance(exc, TooManyRequests) else "failed", end_ts=time.time(),
            error_type=exc.__class__.__name__, error_message=str(exc))
        if isinstance(exc, TooManyRequests):
            service.metrics.throttled(rec.name, exc.reason)
        raise
    return StreamingInvocation(service, record, node_stream, rec.version, request_id, lease, log_type == "Tail")
