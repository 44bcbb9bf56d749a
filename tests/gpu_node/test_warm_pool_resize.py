"""A warm-pool runtime that ends before it is ready: released on purpose while it starts (the
pool shrank) it is no start failure, so the pool does not back off before its next refill and
logs nothing alarming; crashing on its own it is one, so a runtime that cannot start is not
restarted in a tight loop. Neither leaves a process, socket or directory behind."""
from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest

from slfaas.gpu_node.sandboxes.warm_pool import WarmPool
from tests.gpu_node.fakes import wait_until


class FakeRuntime:
    """A pool sandbox: still importing until killed, or (``exits``) dead soon after its start."""

    def __init__(self, exits: bool):
        self.killed = threading.Event()
        if exits:   # a moment later, while the pool waits in accept() for its ready line
            threading.Timer(0.3, self.killed.set).start()

    def wait(self, timeout: float | None = None) -> int | None:
        return 1 if self.killed.wait(timeout) else None

    def kill(self) -> None:
        self.killed.set()


class Launcher:
    kind = "fake"
    cuda = False
    supports_cuda = False

    def __init__(self, work_dir: Path, exits: bool = False):
        self.work_dir = work_dir
        self.exits = exits
        self.launched: list[FakeRuntime] = []

    def launch(self, sid, slot_dir, log_sink, cleanups, prewarm):  # type: ignore[no-untyped-def]
        box = FakeRuntime(self.exits)
        self.launched.append(box)
        return box


def _never_ready(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "never became ready" in r.getMessage()]


def test_a_runtime_released_while_it_starts_is_not_a_failure(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="slfaas.gpu_node.sandboxes.warm_pool")
    launcher = Launcher(tmp_path)
    pool = WarmPool(launcher, 1)   # type: ignore[arg-type]
    try:
        assert wait_until(lambda: pool.held() == 1, 30, 0.02), "the pool never started its runtime"
        pool.resize(0)
        assert launcher.launched[0].killed.is_set()
        pool._starter.shutdown(wait=True)   # the start's own handling of the closed listener is over
        assert not list(tmp_path.iterdir()), "its directory is left behind"
        assert pool.held() == 0
        assert pool._failures == 0
        assert not _never_ready(caplog)
    finally:
        pool.close()


def test_a_runtime_that_dies_while_starting_is_a_failure(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="slfaas.gpu_node.sandboxes.warm_pool")
    launcher = Launcher(tmp_path, exits=True)
    pool = WarmPool(launcher, 1)   # type: ignore[arg-type]
    try:
        assert wait_until(lambda: pool._failures >= 1, 30, 0.02), "a crashed start was not counted"
        assert any(r.levelno >= logging.WARNING for r in caplog.records), "a crashed start went unreported"
        # backing off (5 s after the first failure): not restarted in a loop meanwhile
        launched = len(launcher.launched)
        assert not wait_until(lambda: len(launcher.launched) > launched + 1, 1.0, 0.05)
    finally:
        pool.close()
