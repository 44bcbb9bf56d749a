"""Stops instances whose keep-alive expired (the decision is ``policy.keepalive``'s)."""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from slfaas.gpu_node.lifecycle.launcher import Launcher
from slfaas.gpu_node.lifecycle.table import InstanceTable
from slfaas.gpu_node.policy.keepalive import expired

log = logging.getLogger(__name__)


class KeepAliveReaper:
    def __init__(self, table: InstanceTable, launcher: Launcher, keep_alive_s: float, max_instances: int,
                 clock: Callable[[], float] = time.time):
        self._table = table
        self._launcher = launcher
        self._keep_alive_s = keep_alive_s
        self._max_instances = max_instances
        self._clock = clock
        self._closed = threading.Event()
        threading.Thread(target=self._loop, daemon=True, name="keep-alive-reaper").start()

    def reap(self) -> list[str]:
        snapshot = self._table.snapshot(self._clock(), self._max_instances, None)
        stopped = []
        for iid in expired(snapshot, self._keep_alive_s):
            inst = self._table.get(iid)
            if inst is not None and inst.claim_idle():   # still idle: nobody took it meanwhile
                log.info("keep-alive expired: stopping %s", iid)
                self._launcher.stop(inst)
                stopped.append(iid)
        return stopped

    def _loop(self) -> None:
        interval_s = max(0.05, min(1.0, self._keep_alive_s / 4))
        while not self._closed.wait(interval_s):
            try:
                self.reap()
            except Exception:
                log.exception("keep-alive reaping failed")

    def close(self) -> None:
        self._closed.set()
