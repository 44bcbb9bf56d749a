"""Shrinking a warm pool while a runtime in it is still starting: that runtime is released
quietly. It is no start failure (which would make the pool back off before its next refill)
and leaves no process, socket or directory behind."""
from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest

from slfaas.gpu_node.sandboxes.warm_pool import WarmPool
from tests.gpu_node.fakes import wait_until


class StartingForEver:
    """A pool sandbox whose runtime never reports ready (still importing)."""

    def __init__(self) -> None:
        self.killed = threading.Event()

    def wait(self, timeout: float | None = None) -> int | None:
        return 0 if self.killed.wait(timeout) else None

    def kill(self) -> None:
        self.killed.set()


class Launcher:
    kind = "fake"
    cuda = False
    supports_cuda = False

    def __init__(self, work_dir: Path):
        self.work_dir = work_dir
        self.launched: list[StartingForEver] = []

    def launch(self, sid, slot_dir, log_sink, cleanups, prewarm):  # type: ignore[no-untyped-def]
        box = StartingForEver()
        self.launched.append(box)
        return box


def test_a_runtime_released_while_it_starts_is_not_a_failure(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="slfaas.gpu_node.sandboxes.warm_pool")
    launcher = Launcher(tmp_path)
    pool = WarmPool(launcher, 1)   # type: ignore[arg-type]
    try:
        assert wait_until(lambda: pool.held() == 1, 30, 0.02), "the pool never started its runtime"
        pool.resize(0)
        assert launcher.launched[0].killed.is_set()
        assert wait_until(lambda: not list(tmp_path.iterdir()), 30, 0.02), "its directory is left behind"
        assert pool.held() == 0
        assert pool._failures == 0
        assert not [r for r in caplog.records if "never became ready" in r.getMessage()]
    finally:
        pool.close()
