"""Backbone integrity: compare each backbone with its load-time digest, on a schedule and on
demand; on a mismatch stop the instances that borrow it (their outputs can no longer be
trusted), reload it from its files, and report. The node keeps serving throughout."""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from slfaas.gpu_node.types import IntegrityEvent

if TYPE_CHECKING:
    from slfaas.gpu_node.resources.backbone import BackboneOwner

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IntegrityReport:
    ok: bool
    checked_bytes: int
    elapsed_ms: float
    bad_tensors: tuple[str, ...] = ()


class IntegrityMonitor:
    def __init__(self, backbones: "BackboneOwner", stop_borrowers: Callable[[Path, str], tuple[str, ...]],
                 on_event: Callable[[IntegrityEvent], None], interval_s: float = 0.0):
        """``stop_borrowers(model_path, reason)`` stops (and waits for) every instance borrowing
        that backbone and returns their ids; ``interval_s`` 0: on demand only."""
        self._backbones = backbones
        self._stop_borrowers = stop_borrowers
        self._on_event = on_event
        self._lock = threading.Lock()
        self._closed = threading.Event()
        if interval_s > 0:
            threading.Thread(target=self._loop, args=(interval_s,), daemon=True, name="backbone-verify").start()

    def verify(self) -> tuple[IntegrityEvent, ...]:
        events = []
        with self._lock:
            for path, backbone in self._backbones.backbones().items():
                report = backbone.verify()
                stopped: tuple[str, ...] = ()
                reload_s = None
                if not report.ok:
                    log.error("INTEGRITY: backbone %s changed (%s); stopping its instances and reloading",
                              path, ", ".join(report.bad_tensors[:8]) or "unknown tensors")
                    stopped = self._stop_borrowers(path, f"stopped: backbone integrity check failed ({path.name})")
                    reload_s = backbone.reload()
                    log.warning("backbone %s reloaded in %.2f s after integrity failure", path, reload_s)
                event = IntegrityEvent(time.time(), str(path), report.ok, report.elapsed_ms, report.bad_tensors,
                                       stopped, reload_s)
                events.append(event)
                self._on_event(event)
        return tuple(events)

    def _loop(self, interval_s: float) -> None:
        while not self._closed.wait(interval_s):
            try:
                self.verify()
            except Exception:
                log.exception("scheduled backbone verification failed")

    def close(self) -> None:
        self._closed.set()
