"""The runtime's side of the node's device-activity page (``slfaas.gpu_node.resources.
device_activity``): a pre-warming runtime starts its imports once no request has run on its
device for a moment and pauses between warm-up forwards while requests run, so that filling
the pool does not slow the requests being served. The waits share one budget per runtime
(``MAX_YIELD_S``): under steady load the pool still fills."""
from __future__ import annotations

import mmap
import os
import struct
import time
from typing import Callable

from slfaas.runtime_contract import ENV_DEVICE_ACTIVITY_FD

POLL_S = 0.002         # between warm-up forwards
QUIET_POLL_S = 0.01    # before the imports
QUIET_BEFORE_IMPORTS_S = 0.5
MAX_YIELD_S = 30.0   # in all, per runtime: under steady load the pool must still fill


class ActivityGate:
    """``pause()`` returns when the device has no running invocation, or at once once this
    runtime has paused ``max_yield_s`` in all."""

    def __init__(self, read_count: Callable[[], int], max_yield_s: float = MAX_YIELD_S,
                 sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic):
        self._read = read_count
        self._left_s = max_yield_s
        self._sleep = sleep
        self._clock = clock
        self.paused_s = 0.0

    def pause(self) -> None:
        while self._left_s > 0 and self._read() > 0:
            self._wait(POLL_S)

    def wait_quiet(self, quiet_s: float) -> None:
        """Before a long step that cannot pause midway (the imports): until no invocation has
        run for ``quiet_s`` (back-to-back requests leave gaps of milliseconds), within the same
        budget."""
        quiet_since: float | None = None
        while self._left_s > 0:
            if self._read() > 0:
                quiet_since = None
            elif quiet_since is None:
                quiet_since = self._clock()
            elif self._clock() - quiet_since >= quiet_s:
                return
            self._wait(QUIET_POLL_S)

    def _wait(self, seconds: float) -> None:
        t0 = self._clock()
        self._sleep(seconds)
        waited = self._clock() - t0
        self._left_s -= waited
        self.paused_s += waited


class _Page:
    def __init__(self, fd: int):
        try:
            self._map: mmap.mmap | None = mmap.mmap(fd, mmap.PAGESIZE, prot=mmap.PROT_READ)
        finally:
            os.close(fd)

    def count(self) -> int:
        return struct.unpack_from("<q", self._map, 0)[0] if self._map is not None else 0

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None


def gate_from_env() -> tuple[ActivityGate | None, Callable[[], None]]:
    """(the gate, how to let go of the page), from ``SLFAAS_DEVICE_ACTIVITY_FD``; no gate where
    the node gave no page (or an unusable one: pre-warming then simply does not pause)."""
    value = os.environ.pop(ENV_DEVICE_ACTIVITY_FD, None)
    if not value:
        return None, lambda: None
    try:
        page = _Page(int(value))
    except (ValueError, OSError):
        return None, lambda: None
    return ActivityGate(page.count), page.close
