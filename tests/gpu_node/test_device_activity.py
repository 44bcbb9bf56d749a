"""The device-activity page: the node counts running invocations on it, a pre-warming runtime
reads it through a read-only descriptor and pauses its warm-up while the count is not zero."""
from __future__ import annotations

import json
import mmap
import os
import subprocess
import sys

import pytest

from slfaas.functions.activity import ActivityGate
from slfaas.gpu_node import events as ev
from slfaas.gpu_node.resources.device_activity import DeviceActivity
from slfaas.runtime_contract import ENV_DEVICE_ACTIVITY_FD


def _ended(rid: str) -> ev.InvocationEnded:
    return ev.InvocationEnded(0.0, rid, "f", "$LATEST", 128, "i", False, False, 0.0, 0.0, None, b"", None, {})


def test_counts_invocations_from_start_to_end_or_abort() -> None:
    activity = DeviceActivity()
    try:
        activity.on_event(ev.InvocationStarted(0.0, "a", "i1"))
        activity.on_event(ev.InvocationStarted(0.0, "b", "i2"))
        activity.on_event(ev.InvocationSubmitted(0.0, "c", "f", "$LATEST", "/m", "/c"))   # not running yet
        assert activity.running == 2
        activity.on_event(_ended("a"))
        activity.on_event(ev.InvocationAborted(0.0, "a"))   # after its end: no-op
        assert activity.running == 1
        activity.on_event(ev.InvocationAborted(0.0, "b"))
        assert activity.running == 0
    finally:
        activity.close()
    activity.on_event(ev.InvocationStarted(0.0, "late", "i3"))   # after close: ignored, no error
    activity.close()   # twice: a node may be shut down twice
    assert activity.reader_fd() is None   # no page for a runtime started during shutdown


CHILD = """
import json, os, sys
from slfaas.functions.activity import gate_from_env
fd = int(os.environ["%s"])
gate, release = gate_from_env()
seen = {"env_left": "%s" in os.environ, "fd_open": True}
try:
    os.fstat(fd)
except OSError:
    seen["fd_open"] = False   # the gate keeps a mapping, not the descriptor
seen["count"] = gate._read()
release()
print(json.dumps(seen))
""" % (ENV_DEVICE_ACTIVITY_FD, ENV_DEVICE_ACTIVITY_FD)


def test_a_runtime_reads_the_count_through_an_inherited_read_only_descriptor() -> None:
    activity = DeviceActivity()
    fd = activity.reader_fd()
    try:
        with pytest.raises(PermissionError):
            mmap.mmap(fd, mmap.PAGESIZE)   # shared and writable: refused on a read-only descriptor
        with pytest.raises(OSError):
            os.write(fd, b"\x00" * 8)
        rw = os.open(f"/proc/self/fd/{fd}", os.O_RDWR)   # a memfd's mode lets anyone reopen it ...
        try:
            with pytest.raises(PermissionError):
                mmap.mmap(rw, mmap.PAGESIZE)   # ... but the seal refuses a writable mapping
            with pytest.raises(PermissionError):
                os.write(rw, b"\x00" * 8)
        finally:
            os.close(rw)
        for rid in ("a", "b", "c"):
            activity.on_event(ev.InvocationStarted(0.0, rid, "i"))
        activity.on_event(_ended("c"))
        out = subprocess.run([sys.executable, "-c", CHILD], pass_fds=(fd,), capture_output=True, text=True,
                             env={**os.environ, ENV_DEVICE_ACTIVITY_FD: str(fd)}, timeout=120, check=True)
        assert json.loads(out.stdout) == {"env_left": False, "fd_open": False, "count": 2}
    finally:
        os.close(fd)
        activity.close()


def test_no_page_or_a_bad_one_means_no_pausing(monkeypatch: pytest.MonkeyPatch) -> None:
    from slfaas.functions.activity import gate_from_env

    monkeypatch.delenv(ENV_DEVICE_ACTIVITY_FD, raising=False)
    assert gate_from_env()[0] is None
    monkeypatch.setenv(ENV_DEVICE_ACTIVITY_FD, "not-a-number")
    assert gate_from_env()[0] is None
    r, w = os.pipe()
    os.close(w)
    monkeypatch.setenv(ENV_DEVICE_ACTIVITY_FD, str(r))   # not mappable
    assert gate_from_env()[0] is None
    with pytest.raises(OSError):
        os.fstat(r)   # closed all the same: a runtime keeps no descriptor of what it was given


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def sleep(self, s: float) -> None:
        self.now += s


def test_gate_pauses_while_requests_run_then_goes_on() -> None:
    clock = FakeClock()
    counts = iter([2, 1, 1, 0])
    gate = ActivityGate(lambda: next(counts), max_yield_s=30.0, sleep=clock.sleep, clock=lambda: clock.now)
    gate.pause()
    assert gate.paused_s == pytest.approx(3 * 0.002)


def test_gate_stops_pausing_after_its_budget_under_steady_load() -> None:
    clock = FakeClock()
    gate = ActivityGate(lambda: 1, max_yield_s=1.0, sleep=clock.sleep, clock=lambda: clock.now)
    gate.pause()
    assert 1.0 <= gate.paused_s < 1.01
    before = clock.now
    gate.pause()   # the budget is spent: the next warm-up forward runs at once
    assert clock.now == before


def test_imports_wait_for_a_quiet_moment_not_a_gap_between_requests() -> None:
    clock = FakeClock()
    # running, a 20-ms gap, running again, then quiet for good
    pattern = [1] * 50 + [0] * 2 + [1] * 30 + [0] * 1000
    reads = iter(pattern)
    gate = ActivityGate(lambda: next(reads), max_yield_s=30.0, sleep=clock.sleep, clock=lambda: clock.now)
    gate.wait_quiet(0.5)
    # the gap did not start the imports: they wait for 0.5 s of quiet after the last request
    assert gate.paused_s == pytest.approx((50 + 2 + 30) * 0.01 + 0.5, abs=0.02)


def test_quiet_wait_and_pauses_share_one_budget() -> None:
    clock = FakeClock()
    gate = ActivityGate(lambda: 1, max_yield_s=2.0, sleep=clock.sleep, clock=lambda: clock.now)
    gate.wait_quiet(0.5)   # never quiet: gives up when the budget is spent
    assert gate.paused_s == pytest.approx(2.0, abs=0.02)
    gate.pause()
    assert gate.paused_s == pytest.approx(2.0, abs=0.02)
