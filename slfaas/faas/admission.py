"""The API-wide bound on invocations in flight, and what stops the work of a caller who left.

Every synchronous invocation (buffered or streamed, Lambda or OpenAI API) holds one slot from
admission until it ends; beyond the bound the caller gets 429 with Retry-After at once,
never a place in an unbounded queue. The HTTP server has threads for the slots plus its own
for everything else, so health and control operations never wait behind invocations.
"""
from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

from slfaas.errors import TooManyRequests

log = logging.getLogger(__name__)

DEFAULT_MAX_CONCURRENT_INVOCATIONS = 64
DISCONNECT_POLL_S = 0.2


class InvocationSlots:
    def __init__(self, limit: int):
        if limit < 1:
            raise ValueError(f"the bound on concurrent invocations must be at least 1, got {limit}")
        self.limit = limit
        self._lock = threading.Lock()
        self._in_flight = 0

    @property
    def in_flight(self) -> int:
        with self._lock:
            return self._in_flight

    def acquire(self) -> None:
        with self._lock:
            if self._in_flight >= self.limit:
                raise TooManyRequests(
                    f"Rate Exceeded: {self.limit} invocations are in flight, the server's limit "
                    f"(--max-concurrent-invocations); retry later", reason="ConcurrentInvocationLimitExceeded")
            self._in_flight += 1

    def release(self) -> None:
        with self._lock:
            self._in_flight -= 1

    @contextmanager
    def slot(self) -> Iterator[None]:
        self.acquire()
        try:
            yield
        finally:
            self.release()


@dataclass
class _Watch:
    client_gone: Callable[[], bool]
    cancelled: threading.Event = field(default_factory=threading.Event)
    # held while the node is asked to cancel: the invocation's thread takes it before it reads
    # ``cancelled``, so a cancel that ended the invocation is always seen as one
    lock: threading.Lock = field(default_factory=threading.Lock)
    over: bool = False   # the invocation ended: nothing to cancel any more


class DisconnectWatch:
    """Polls the callers of running invocations (one thread, while there are any); when one
    has gone, ``cancel(request_id)`` asks the node to stop that invocation's work."""

    def __init__(self, cancel: Callable[[str], bool], poll_s: float = DISCONNECT_POLL_S):
        self._cancel = cancel
        self._poll_s = poll_s
        self._lock = threading.Lock()
        self._watched: dict[str, _Watch] = {}
        self._thread: threading.Thread | None = None

    @contextmanager
    def watching(self, request_id: str, client_gone: Callable[[], bool] | None) -> Iterator[threading.Event]:
        """The returned event is set once the invocation was cancelled because its caller left.
        It is final when the block ends (read it after the block, not inside)."""
        if client_gone is None:
            yield threading.Event()
            return
        watch = _Watch(client_gone)
        with self._lock:
            self._watched[request_id] = watch
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, daemon=True, name="disconnect-watch")
                self._thread.start()
        try:
            yield watch.cancelled
        finally:
            with self._lock:
                self._watched.pop(request_id, None)
            with watch.lock:   # a cancel under way (it may be what ended the invocation) completes first
                watch.over = True

    def _loop(self) -> None:
        while True:
            with self._lock:
                if not self._watched:
                    self._thread = None
                    return
                items = list(self._watched.items())
            for request_id, watch in items:
                if watch.cancelled.is_set():
                    continue
                try:
                    gone = watch.client_gone()
                except Exception:   # a probe that fails says nothing about the caller
                    log.debug("disconnect probe of %s failed", request_id, exc_info=True)
                    continue
                if gone:
                    self._cancel_one(request_id, watch)
            time.sleep(self._poll_s)

    def _cancel_one(self, request_id: str, watch: _Watch) -> None:
        with watch.lock:
            if watch.over:
                return
            try:
                stopped = self._cancel(request_id)   # False: not (yet) known to the node
            except Exception:
                log.exception("cancelling %s failed", request_id)
                return
            if stopped:
                log.info("caller of %s went away: its invocation was cancelled", request_id)
                watch.cancelled.set()
