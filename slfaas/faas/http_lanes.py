"""Two lanes in front of the HTTP server's threads, so control never waits behind invocations.

waitress hands each ready request to one FIFO queue served by one pool of threads. Under a
burst of invocations (200 at once, a bound of 16), the threads not held by running
invocations were all busy answering the rest 429, each doing its registry reads and writes,
and a health probe waited 0.6-1.3 s for one of them (measured on a 2-core machine: the
probe's view ran that long after the client sent it). Here control requests (health, control
operations, metrics, anything that is not an invocation) have their own lane and a few
threads of their own, and every other thread takes the oldest control request before the
oldest invocation; invocations keep their order among themselves.
"""
from __future__ import annotations

import logging
import threading
from collections import deque
from typing import Any, Callable

from flask import Flask
from waitress.server import BaseWSGIServer, MultiSocketServer
from waitress.task import ThreadedTaskDispatcher
from werkzeug.exceptions import HTTPException

log = logging.getLogger(__name__)

# the Flask endpoints that run a function (buffered, streamed, or through the OpenAI API)
INVOCATION_ENDPOINTS = frozenset({"lambda_api.invoke", "lambda_streaming.invoke_with_response_stream",
                                  "openai_api.completions", "openai_api.chat_completions"})


def invocation_classifier(app: Flask) -> Callable[[str, str], bool]:
    """``(method, path) -> True`` for a request that invokes a function, by the app's own routes."""
    adapter = app.url_map.bind("localhost")
    known = {rule.endpoint for rule in app.url_map.iter_rules()}
    missing = INVOCATION_ENDPOINTS - known
    if missing:   # a renamed view would silently move invocations into the control lane
        raise RuntimeError(f"invocation endpoints not among the app's routes: {sorted(missing)}")

    def is_invocation(method: str, path: str) -> bool:
        try:
            endpoint, _args = adapter.match(path, method=method)
        except HTTPException:   # 404, 405: answered at once, in the control lane
            return False
        return endpoint in INVOCATION_ENDPOINTS

    return is_invocation


class TwoLaneQueue:
    """The dispatcher's queue (it uses ``append``, ``popleft``, ``len`` and truth): control
    requests leave before invocations, each lane first in, first out."""

    def __init__(self, is_background: Callable[[Any], bool]):
        self._is_background = is_background
        self._control: deque[Any] = deque()
        self._invocations: deque[Any] = deque()

    def append(self, task: Any) -> None:
        (self._invocations if self._is_background(task) else self._control).append(task)

    def popleft(self) -> Any:
        return self._control.popleft() if self._control else self._invocations.popleft()

    @property
    def control_waiting(self) -> bool:
        return bool(self._control)

    def __len__(self) -> int:
        return len(self._control) + len(self._invocations)

    def __bool__(self) -> bool:
        return bool(self._control or self._invocations)


CONTROL_ONLY_THREADS = 4   # threads that never take an invocation: control always has one soon


class LaneDispatcher(ThreadedTaskDispatcher):
    """waitress's dispatcher with the two-lane queue; threads numbered below ``control_only``
    serve the control lane alone. A task is a channel whose next request is ``requests[0]``
    when it is queued (waitress queues a channel once per request, under its request lock)."""

    def __init__(self, is_invocation: Callable[[str, str], bool], control_only: int):
        super().__init__()
        self.control_only = control_only
        self.queue: TwoLaneQueue = TwoLaneQueue(self._is_background)   # type: ignore[assignment]
        self._is_invocation = is_invocation
        self.control_cv = threading.Condition(self.lock)   # where the control-only threads wait
        self._count: int | None = None

    def _is_background(self, channel: Any) -> bool:
        try:
            request = channel.requests[0]
            return self._is_invocation(request.command or "GET", request.path or "/")
        except Exception:   # nothing to classify, or a classifier that failed: served as control
            log.exception("could not tell which lane a request goes to; serving it as a control request")
            return False

    def handler_thread(self, thread_no: int) -> None:
        if thread_no >= self.control_only:
            super().handler_thread(thread_no)
            return
        # waitress's loop, waiting for and taking control requests only
        while True:
            with self.lock:
                while not self.queue.control_waiting and self.stop_count == 0:
                    self.active_count -= 1
                    self.control_cv.wait()
                    self.active_count += 1
                if self.stop_count > 0:
                    self.active_count -= 1
                    self.stop_count -= 1
                    self.threads.discard(thread_no)
                    self.thread_exit_cv.notify()
                    break
                task = self.queue.popleft()
            try:
                task.service()
            except BaseException:
                self.logger.exception("Exception when servicing %r", task)

    def add_task(self, task: Any) -> None:
        with self.lock:
            self.queue.append(task)
            self.queue_cv.notify()   # a thread of both lanes
            if self.queue.control_waiting:
                self.control_cv.notify()   # and one of control's own, in case all of those are busy
            waiting = len(self.queue) - (len(self.threads) - self.stop_count - self.active_count)
            if waiting > 0:   # as waitress's own dispatcher says it
                self.queue_logger.warning("Task queue depth is %d", waiting)

    def set_thread_count(self, count: int) -> None:
        """Once, then 0 at shutdown: a thread's lane is fixed by its number (waitress stops
        whichever threads see a stop first, so lowering the count could leave none for
        invocations)."""
        if count:
            if self._count is not None and count != self._count:
                raise ValueError(f"this dispatcher runs {self._count} threads until shutdown, not {count}")
            if count <= self.control_only:
                raise ValueError(f"{count} threads leave none for invocations beside {self.control_only} "
                                 f"control-only ones")
            self._count = count
        super().set_thread_count(count)
        with self.lock:   # threads told to stop may be waiting for control requests
            self.control_cv.notify_all()


def lane_dispatcher(is_invocation: Callable[[str, str], bool], threads: int,
                    control_only: int = CONTROL_ONLY_THREADS) -> LaneDispatcher:
    """``threads`` serving both lanes plus ``control_only`` serving control alone."""
    dispatcher = LaneDispatcher(is_invocation, control_only)
    dispatcher.set_thread_count(threads + control_only)
    return dispatcher


ACCEPT_BATCH = 64   # connections taken from the kernel's queue per wake-up of the I/O loop


def accept_in_batches(server: Any) -> None:
    """Make each listening socket of a waitress server accept every connection waiting (up to
    ``ACCEPT_BATCH``) when it wakes, not one per turn of its I/O loop. A burst of 200 clients
    otherwise keeps a health probe in the kernel's accept queue behind them, one loop turn each
    while 200 other threads want the interpreter (measured: 0.4-1 s before it was accepted)."""
    socket_map = server.map if isinstance(server, MultiSocketServer) else server._map
    for listener in [obj for obj in socket_map.values() if isinstance(obj, BaseWSGIServer)]:
        accept_one = listener.handle_accept

        def handle_accept(listener: BaseWSGIServer = listener, accept_one: Callable[[], None] = accept_one) -> None:
            for _ in range(ACCEPT_BATCH):
                open_before = len(socket_map)
                if open_before >= listener.adj.connection_limit:
                    return   # waitress stops listening at its limit (``readable``)
                accept_one()
                if len(socket_map) == open_before:   # none was waiting (or a failed accept, logged)
                    return

        listener.handle_accept = handle_accept   # type: ignore[method-assign]

