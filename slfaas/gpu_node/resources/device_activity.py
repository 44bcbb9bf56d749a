"""How many invocations run on this node's device now, on a page pre-warming runtimes can read.

A runtime that pre-warms (context, backbone, warm-up forwards over every shape) competes with
the requests being served for the GPU and the host: on the H200 a served decode step took
~86 ms instead of ~45 ms while the pool refilled beside it, and a cold start's first prefill
was up to 1.5x a warm one's. A pre-warming runtime receives a read-only descriptor of this
page, waits for a quiet moment before its imports and pauses between its warm-up forwards
while the count is not zero (for a bounded time: ``slfaas.functions.activity``); it lets go of
the page before any function owns it, so no function can watch its neighbours' traffic. The
page is sealed: only the node's own mapping writes to it.

The count follows the node's events: an invocation counts from ``InvocationStarted`` until
``InvocationEnded`` or ``InvocationAborted``.
"""
from __future__ import annotations

import fcntl
import mmap
import os
import struct
import threading
from typing import Callable

from slfaas.gpu_node import events as ev

_COUNT = struct.Struct("<q")
F_SEAL_FUTURE_WRITE = getattr(fcntl, "F_SEAL_FUTURE_WRITE", 0x0010)   # Linux 5.1; not named in every Python


class DeviceActivity:
    def __init__(self) -> None:
        self._fd = os.memfd_create("slfaas-device-activity", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        os.ftruncate(self._fd, mmap.PAGESIZE)
        self._page = mmap.mmap(self._fd, mmap.PAGESIZE)   # shared, writable: the node's side
        # From now on only this mapping writes: a descriptor reopened read-write (a memfd's mode
        # lets anyone reopen it) can neither map it writable nor write to it.
        fcntl.fcntl(self._fd, fcntl.F_ADD_SEALS,
                    F_SEAL_FUTURE_WRITE | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL)
        self._lock = threading.Lock()
        self._running: set[str] = set()
        self._closed = False

    @property
    def running(self) -> int:
        with self._lock:
            return len(self._running)

    def on_event(self, event: ev.NodeEvent) -> None:
        if isinstance(event, ev.InvocationStarted):
            self._update(lambda r: r.add(event.request_id))
        elif isinstance(event, (ev.InvocationEnded, ev.InvocationAborted)):
            self._update(lambda r: r.discard(event.request_id))

    def _update(self, change: Callable[[set[str]], None]) -> None:
        with self._lock:
            if self._closed:
                return
            change(self._running)
            _COUNT.pack_into(self._page, 0, len(self._running))

    def reader_fd(self) -> int | None:
        """A new read-only descriptor of the page for one runtime (the caller closes it once the
        runtime holds its copy); None once the node is shutting down (the runtime then does not
        pause)."""
        with self._lock:
            if self._closed:
                return None
            return os.open(f"/proc/self/fd/{self._fd}", os.O_RDONLY | os.O_CLOEXEC)

    def close(self) -> None:
        with self._lock:
            if self._closed:   # a node may be shut down twice
                return
            self._closed = True
            self._page.close()
            os.close(self._fd)
