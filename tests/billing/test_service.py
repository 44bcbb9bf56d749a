"""CostService with a real registry (SQLite and PostgreSQL): budget admission, settlement,
warnings, and the live usage of several nodes in a report."""
from __future__ import annotations

import threading
from dataclasses import replace as dataclasses_replace
from decimal import Decimal

import pytest

from slfaas.billing.budgets import Budget, BudgetExceeded
from slfaas.billing.records import NodeUsage, UsageRecord
from slfaas.billing.service import CostService
from slfaas.faas.registry import Registry


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def rec(rid: str, cost: str, end_ts: float, fn: str = "f") -> UsageRecord:
    return UsageRecord(request_id=rid, function_name=fn, version="$LATEST", node_id="n", device="cpu",
                       device_type="cpu", start_ts=end_ts - 1, end_ts=end_ts, status="success", cold_start=False,
                       preload_tier="warm", batch_size=1, batch_device_s=0.5, compute_device_s=0.5,
                       init_device_s=0.0, runtime_overhead_s=0.0, queue_s=0.0, tokens_in=1, tokens_out=1,
                       memory_mb=2048, cost_usd=Decimal(cost))


@pytest.fixture
def registry(database_url: str):  # type: ignore[no-untyped-def]
    r = Registry(database_url)
    yield r
    r.close()


DAY0 = 1795392000.0 + 3600   # 2026-11-23T01:00Z


def test_a_function_without_history_runs_one_at_a_time_under_a_hard_budget(registry) -> None:  # type: ignore[no-untyped-def]
    svc = CostService(registry, clock=Clock(DAY0))
    svc.set_budget(Budget.create("b", "1.00", "day", hard=True))
    svc.admit("f", "r1")
    with pytest.raises(BudgetExceeded):
        svc.admit("f", "r2")                      # its cost is unknown: no second one in flight
    svc.record(rec("r1", "0.10", DAY0))
    svc.admit("f", "r3")                          # now estimated at $0.10 each
    svc.admit("f", "r4")


def test_history_survives_a_restart_so_a_burst_after_it_is_still_stopped(registry) -> None:  # type: ignore[no-untyped-def]
    first = CostService(registry, clock=Clock(DAY0))
    first.set_budget(Budget.create("b", "1.00", "day", hard=True, function_name="f"))
    for i in range(8):
        first.admit("f", f"r{i}")
        first.record(rec(f"r{i}", "0.10", DAY0 + i))
    second = CostService(registry, clock=Clock(DAY0 + 100))   # spent $0.80, estimate $0.10 from the registry
    admitted = []
    errors = []

    def one(i: int) -> None:
        try:
            second.admit("f", f"s{i}")
            admitted.append(i)
        except BudgetExceeded as exc:
            errors.append(exc)
    threads = [threading.Thread(target=one, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(admitted) == 2 and len(errors) == 18
    assert "raise it with `slfaas cost budget set b" in str(errors[0])


def test_a_failed_registry_write_still_settles_the_budget(registry, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    svc = CostService(registry, clock=Clock(DAY0))
    svc.set_budget(Budget.create("b", "1.00", "day", hard=True))
    svc.admit("f", "r1")

    def broken(_rec: UsageRecord) -> None:
        raise OSError("database is locked")
    monkeypatch.setattr(registry, "record_usage", broken)
    with pytest.raises(OSError):
        svc.record(rec("r1", "0.70", DAY0))
    assert svc.guard.spent_usd("b", DAY0) == Decimal("0.70")


def test_warnings_fire_once_per_level_per_period(registry, caplog) -> None:  # type: ignore[no-untyped-def]
    clock = Clock(DAY0 + 20 * 3600)              # late in the day: projections stay near the spend
    seen: list[str] = []
    svc = CostService(registry, clock=clock, on_budget_warning=lambda fn, msg: seen.append(msg))
    svc.set_budget(Budget.create("b", "1.00", "day"))
    svc.record(rec("a", "0.85", clock.t))
    svc.record(rec("b", "0.01", clock.t))        # still "warning": not again
    assert len(seen) == 1 and "WARNING" in seen[0]
    svc.record(rec("c", "0.20", clock.t))        # exceeded
    assert len(seen) == 2 and "EXCEEDED" in seen[1]
    clock.t += 86400                             # the next day starts from zero and warns again
    svc.record(rec("d", "0.85", clock.t))
    assert len(seen) == 3 and "WARNING" in seen[2]


def test_a_budget_reloaded_while_a_cost_is_settled_keeps_that_cost(registry, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Budgets are re-seeded from the registry when one is set. A cost settled in memory but
    not yet stored must not be lost to that seed (a hard budget would then let more through)."""
    svc = CostService(registry, clock=Clock(DAY0))
    budget = Budget.create("b", "1.00", "day", hard=True)
    svc.set_budget(budget)
    svc.admit("f", "r1")
    store = registry.record_usage
    reloads: list[threading.Thread] = []

    def store_after_a_concurrent_reload(usage: UsageRecord) -> None:
        done = threading.Event()
        t = threading.Thread(target=lambda: (svc.set_budget(budget), done.set()))
        reloads.append(t)
        t.start()
        done.wait(1.0)     # the reload runs now if nothing holds it off until this cost is stored
        store(usage)
    monkeypatch.setattr(registry, "record_usage", store_after_a_concurrent_reload)
    svc.record(rec("r1", "0.70", DAY0))
    reloads[0].join()
    assert svc.guard.spent_usd("b", DAY0) == Decimal("0.70")
    assert registry.spent_usd(DAY0 - 3600, DAY0 + 3600) == Decimal("0.70")


def node_usage(node_id: str, start_ts: float, end_ts: float, billed_s: float) -> NodeUsage:
    elapsed = end_ts - start_ts
    return NodeUsage(node_id, "cuda:0", "H200", start_ts, end_ts, elapsed, billed_s,
                     {"node_idle": elapsed - billed_s}, {}, backbone_bytes=14_483_456_000, backbone_load_s=3.5)


def test_every_live_node_and_every_stored_one_is_in_the_report(registry) -> None:  # type: ignore[no-untyped-def]
    lost = node_usage("lost", DAY0, DAY0 + 50, 1.0)          # died earlier: its last flush is stored
    registry.put_node_usage(lost)
    live = [node_usage("gpu0", DAY0, DAY0 + 100, 1.0), node_usage("gpu1", DAY0 + 10, DAY0 + 100, 2.0)]
    svc = CostService(registry, clock=Clock(DAY0 + 100), live_nodes=lambda: live)
    for i, node_id in enumerate(("gpu0", "gpu1", "gpu1", "lost")):
        svc.record(dataclasses_replace(rec(f"r{i}", "0.25", DAY0 + 20 + i), node_id=node_id))
    assert [n.node_id for n in svc.nodes(None, None)] == ["lost", "gpu0", "gpu1"]
    assert registry.list_node_usage()[0].backbone_bytes == 14_483_456_000   # a 7B backbone: 64-bit sizes
    report = svc.report()
    assert report.total.cost_usd == Decimal("1.00") and report.total.invocations == 4
    assert report.node_elapsed_s == pytest.approx(50 + 100 + 90)
    one = CostService(registry, clock=Clock(DAY0 + 100), live_node=lambda: live[0])   # a single node, as before
    assert [n.node_id for n in one.nodes(None, None)] == ["lost", "gpu0"]


def test_a_node_flushing_its_usage_from_two_threads_keeps_one_row(registry) -> None:  # type: ignore[no-untyped-def]
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def flush(i: int) -> None:
        start.wait()
        try:
            registry.put_node_usage(node_usage("racer", DAY0, DAY0 + 10 + i, 1.0))
        except BaseException as exc:
            errors.append(exc)
    threads = [threading.Thread(target=flush, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert [n.node_id for n in registry.list_node_usage()] == ["racer"]


def test_instance_lives_are_kept_and_listed_with_the_live_ones(registry) -> None:  # type: ignore[no-untyped-def]
    from slfaas.billing.records import InstanceUsage

    def life(iid: str, start: float, end: float | None, fn: str = "f") -> InstanceUsage:
        return InstanceUsage(iid, fn, "$LATEST", "n", "cuda:0", "H200", 2048, start, end, start + 1,
                             13_824.0, True, 3)

    registry.record_instance_usage(life("old", DAY0 - 100, DAY0 - 50))
    registry.record_instance_usage(life("a", DAY0, DAY0 + 10))
    registry.record_instance_usage(life("b", DAY0 + 5, DAY0 + 30, fn="g"))
    with pytest.raises(ValueError, match="has not ended"):
        registry.record_instance_usage(life("alive", DAY0, None))
    live = [life("c", DAY0 + 20, None)]
    svc = CostService(registry, clock=Clock(DAY0 + 40), live_instances=lambda: live)
    got = svc.instances(DAY0, DAY0 + 40)
    assert [i.instance_id for i in got] == ["a", "b", "c"]
    assert got[0] == life("a", DAY0, DAY0 + 10)     # every field kept
    assert [i.instance_id for i in svc.instances(DAY0, DAY0 + 40, "g")] == ["b"]
    assert [i.instance_id for i in svc.instances(DAY0 + 11, DAY0 + 19)] == ["b"]
