"""The open-loop replayer: each request is started at its scheduled instant by a pool of
client threads, whether or not earlier ones have finished (a closed loop would slow down
with the server and hide its queueing). ``max_in_flight`` threads and as many HTTP
connections; if they are all busy a request is sent late, and since latency counts from the
scheduled instant the delay is charged to the system, and shows as ``client_lag_ms``."""
from __future__ import annotations

import json
import logging
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, Callable, Protocol, Sequence

from slfaas.bench.errors import TraceError
from slfaas.bench.records import RequestRecord
from slfaas.bench.workload import PlannedRequest

log = logging.getLogger(__name__)

Clock = Callable[[], float]
THROTTLED = "TooManyRequestsException"
THROTTLE_BACKOFF_S = (0.05, 1.0)     # first and largest wait between a 429 and the next attempt


@dataclass(frozen=True)
class WorkItem:
    request: PlannedRequest
    prompt: str
    prompt_tokens: int     # the prompt's token count (the base tokenizer's, BOS included)

    def event(self) -> dict[str, Any]:
        # greedy and ignore_eos: exactly output_tokens tokens, whatever the weights
        return {"prompt": self.prompt, "max_tokens": self.request.output_tokens, "temperature": 0,
                "ignore_eos": True}

    def record(self, scheduled_s: float, **fields: Any) -> RequestRecord:
        return RequestRecord(index=self.request.index, function=self.request.function, scheduled_s=scheduled_s,
                             prompt_tokens=self.prompt_tokens, output_tokens=self.request.output_tokens,
                             **{"sent_s": None, "first_byte_s": None, "end_s": None, **fields})


class Sender(Protocol):
    """Sends one request and times it with ``clock`` (seconds since the replay started)."""

    def __call__(self, item: WorkItem, scheduled_s: float, clock: Clock) -> RequestRecord: ...


@dataclass(frozen=True)
class ReplayRun:
    records: tuple[RequestRecord, ...]   # in slice order
    started_unix: float                  # wall clock of the replay's instant 0
    wall_s: float


def run_open_loop(items: Sequence[WorkItem], send: Sender, *, speedup: float, max_in_flight: int,
                  on_done: Callable[[RequestRecord], None] | None = None) -> ReplayRun:
    """Replay ``items`` (in arrival order): item i is due ``arrival_s / speedup`` seconds
    after the start."""
    if not math.isfinite(speedup) or speedup <= 0:
        raise TraceError(f"--speedup must be a number > 0, got {speedup}")
    if max_in_flight < 1:
        raise TraceError(f"--max-in-flight must be at least 1, got {max_in_flight}")
    if any(b.request.arrival_s < a.request.arrival_s for a, b in zip(items, items[1:])):
        raise TraceError("requests must be in arrival order")
    records: list[RequestRecord | None] = [None] * len(items)
    t0 = time.perf_counter()
    started_unix = time.time()

    def clock() -> float:
        return time.perf_counter() - t0

    def one(k: int, item: WorkItem, scheduled_s: float) -> None:
        try:
            record = send(item, scheduled_s, clock)
        except Exception as exc:  # a sender's bug must not lose the request: it becomes an error record
            log.exception("request %d failed in the client", item.request.index)
            record = item.record(scheduled_s, end_s=clock(), error_type=exc.__class__.__name__, error=str(exc))
        records[k] = record
        if on_done is not None:
            on_done(record)

    pool = ThreadPoolExecutor(max_workers=max_in_flight, thread_name_prefix="replay")
    try:
        for k, item in enumerate(items):
            scheduled_s = item.request.arrival_s / speedup
            delay_s = scheduled_s - clock()
            if delay_s > 0:
                time.sleep(delay_s)
            pool.submit(one, k, item, scheduled_s)
    except BaseException:  # Ctrl-C: send nothing more; requests in flight finish
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    done = tuple(r for r in records if r is not None)
    return ReplayRun(done, started_unix, clock())


class Boto3Sender:
    """``invoke_with_response_stream`` through one boto3 client (thread-safe) with a
    connection per client thread, no retries (a throttle is a result, not something to hide)."""

    def __init__(self, endpoint: str, max_in_flight: int, read_timeout_s: float = 900.0,
                 connect_timeout_s: float = 10.0, retry_throttled_s: float = 0.0):
        """``retry_throttled_s``: a request refused with a 429 (no instance free and none can be
        started) is sent again, with backoff, until this long after its scheduled arrival (a
        client that waits, as SDKs retry throttles); 0: a throttle is the request's result."""
        self.retry_throttled_s = retry_throttled_s
        import boto3
        from botocore.config import Config

        session = boto3.session.Session(
            aws_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID", "slfaas"),
            aws_secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY", "slfaas"),
            region_name=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"))
        self.client = session.client("lambda", endpoint_url=endpoint, config=Config(
            max_pool_connections=max_in_flight, retries={"total_max_attempts": 1},
            read_timeout=read_timeout_s, connect_timeout=connect_timeout_s, tcp_keepalive=True))

    def __call__(self, item: WorkItem, scheduled_s: float, clock: Clock) -> RequestRecord:
        delay_s = THROTTLE_BACKOFF_S[0]
        throttles = 0
        while True:
            record = self._once(item, scheduled_s, clock)
            if (record.error_type != THROTTLED or clock() + delay_s > scheduled_s + self.retry_throttled_s):
                return replace(record, throttles=throttles) if throttles else record
            throttles += 1
            time.sleep(delay_s)
            delay_s = min(delay_s * 2, THROTTLE_BACKOFF_S[1])

    def _once(self, item: WorkItem, scheduled_s: float, clock: Clock) -> RequestRecord:
        from botocore.exceptions import BotoCoreError, ClientError

        payload = json.dumps(item.event()).encode()
        sent_s = clock()
        first_s: float | None = None
        received = 0
        request_id = error_type = error = None
        try:
            resp = self.client.invoke_with_response_stream(FunctionName=item.request.function, Payload=payload)
            request_id = resp.get("ResponseMetadata", {}).get("RequestId")
            for event in resp["EventStream"]:
                chunk = event.get("PayloadChunk", {}).get("Payload")
                if chunk:
                    if first_s is None:
                        first_s = clock()
                    received += len(chunk)
                done = event.get("InvokeComplete")
                if done and done.get("ErrorCode"):
                    error_type, error = done["ErrorCode"], done.get("ErrorDetails") or ""
        except ClientError as exc:
            err = exc.response.get("Error", {})
            error_type, error = err.get("Code") or exc.__class__.__name__, err.get("Message") or str(exc)
            request_id = request_id or exc.response.get("ResponseMetadata", {}).get("RequestId")
        except (BotoCoreError, OSError) as exc:
            error_type, error = exc.__class__.__name__, str(exc)
        return item.record(scheduled_s, sent_s=sent_s, first_byte_s=first_s, end_s=clock(),
                           request_id=request_id or None, response_bytes=received,
                           error_type=error_type, error=error)
