"""The dispatcher applies the scheduler's decisions to real Instance objects (no sandboxes)."""
from __future__ import annotations

from pathlib import Path

import pytest

from slfaas.errors import TooManyRequests
from slfaas.gpu_node.dispatch import Dispatcher
from slfaas.gpu_node.lifecycle.instance import Instance, InstanceState
from slfaas.gpu_node.lifecycle.table import InstanceTable
from slfaas.gpu_node.policy.scheduling import FcfsScheduler
from slfaas.gpu_node.policy.view import GpuView
from slfaas.gpu_node.resources.memory import MemoryLedger
from tests.gpu_node.fakes import make_request, make_spec

SPEC = make_spec(Path("/nonexistent"), Path("/nonexistent"), name="a")
OTHER = make_spec(Path("/nonexistent"), Path("/nonexistent"), name="b")


def _idle(table: InstanceTable, spec=SPEC, iid: str = "a-1", used_ts: float = 0.0) -> Instance:  # type: ignore[no-untyped-def]
    inst = Instance(iid, spec)
    with inst._lock:
        inst._move(InstanceState.IDLE)
    inst.last_used_ts = used_ts
    table.add(inst)
    return inst


def test_warm_instance_is_reserved_for_the_request() -> None:
    table = InstanceTable()
    warm = _idle(table)
    d = Dispatcher(FcfsScheduler(), table, 4, stop=lambda i: None)
    req = make_request(SPEC)
    placed = d.submit(req)
    assert placed.instance is warm and placed.cold is False and placed.evict == ()
    assert warm.state is InstanceState.BUSY and warm.holds(req.request_id)


def test_cold_start_claims_the_evictee_and_registers_the_new_instance() -> None:
    table = InstanceTable()
    old = _idle(table, OTHER, "b-1")
    d = Dispatcher(FcfsScheduler(), table, 1, stop=lambda i: None)
    req = make_request(SPEC)
    placed = d.submit(req)
    assert placed.cold is True and placed.evict == (old,)
    assert old.state is InstanceState.STOPPING   # claimed: nobody else can take it now
    assert table.get(placed.instance.instance_id) is placed.instance
    assert placed.instance.holds(req.request_id) and placed.instance.state is InstanceState.STARTING


def test_refusal_raises_too_many_requests_with_the_reason() -> None:
    table = InstanceTable()
    ledger = MemoryLedger(upper_bound_mb=2000, free_mb=lambda: 1000.0)
    d = Dispatcher(FcfsScheduler(), table, 4, stop=lambda i: None, gpu_view=ledger.gpu_view)
    with pytest.raises(TooManyRequests) as exc:
        d.submit(make_request(SPEC))
    assert exc.value.reason == "InsufficientGpuMemory"
    assert table.all() == [] and d.waiting() == 0


def test_memory_ledger_estimates_from_measurements_bounded_above() -> None:
    ledger = MemoryLedger(upper_bound_mb=1536, free_mb=lambda: 10_000.0, measure=lambda pids: {
        iid: {11: 700.0, 12: 900.0, 13: 5000.0}[pid] for pid, iid in pids.items()})
    assert ledger.instance_estimate_mb() == 1536          # nothing measured: the configured bound
    assert ledger.observe("i1", 11) == 700.0 and ledger.instance_estimate_mb() == 700.0
    ledger.observe("i2", 12)
    assert ledger.instance_estimate_mb() == 900.0          # the largest recent measurement
    ledger.observe("i3", 13)
    assert ledger.instance_estimate_mb() == 1536           # never above the bound
    assert ledger.gpu_view() == GpuView(10_000.0, 1536)
    assert MemoryLedger(1536).gpu_view() is None           # no device probe: no admission (CPU)
