"""Processor-sharing device timeline and the batch/init allocation rules."""
from __future__ import annotations

import random

import pytest

from slfaas.billing.ledger import compute_share, init_phases
from slfaas.billing.records import INIT_PHASES
from slfaas.billing.timeline import DeviceTimeline


def test_overlapping_activities_share_the_device_evenly() -> None:
    t = DeviceTimeline(0.0)
    t.start_activity("a", "compute", 0.0)
    t.start_activity("b", "compute", 5.0)
    assert t.end_activity("a", 10.0) == pytest.approx(7.5)   # 5 alone + 5 shared
    assert t.end_activity("b", 15.0) == pytest.approx(7.5)   # 5 shared + 5 alone
    tot = t.totals(15.0)
    assert tot.accrued_s["compute"] == pytest.approx(15.0)
    assert sum(tot.overhead_s.values()) == pytest.approx(0.0)


def test_idle_time_goes_to_one_overhead_category_in_priority_order() -> None:
    t = DeviceTimeline(0.0)
    t.advance(1.0)                              # nothing resident: node idle
    t.set_backbones(1, 1.0)
    t.advance(3.0)                              # backbone resident, unused
    t.set_pool_size(2, 3.0)
    t.advance(6.0)                              # warm pool held
    t.instance_idle("i1", "fa", 6.0)
    t.instance_idle("i2", "fb", 6.0)
    t.advance(10.0)                             # two idle instances: keep-alive, split by function
    t.instance_busy("i1", 10.0)
    t.advance(12.0)                             # only fb's instance idle
    tot = t.totals(12.0)
    assert tot.overhead_s == pytest.approx({"node_idle": 1.0, "idle_backbone": 2.0, "preload": 3.0,
                                            "keep_alive": 6.0})
    assert tot.keep_alive_by_function_s == pytest.approx({"fa": 2.0, "fb": 4.0})


def test_work_beats_keep_alive_and_totals_conserve_under_random_events() -> None:
    rng = random.Random(7)
    t = DeviceTimeline(100.0)
    now = 100.0
    active: list[str] = []
    accrued = 0.0
    for i in range(2000):
        now += rng.expovariate(5.0)
        op = rng.random()
        if op < 0.4:
            key = f"k{i}"
            t.start_activity(key, rng.choice(["compute", "init", "preload"]), now)
            active.append(key)
        elif op < 0.8 and active:
            accrued += t.end_activity(active.pop(rng.randrange(len(active))), now)
        elif op < 0.9:
            t.instance_idle(f"i{rng.randrange(4)}", f"f{rng.randrange(3)}", now)
        else:
            t.instance_busy(f"i{rng.randrange(4)}", now)
    for key in active:
        accrued += t.end_activity(key, now)
    tot = t.totals(now + 3.0)
    assert sum(tot.accrued_s.values()) == pytest.approx(accrued)
    assert sum(tot.accrued_s.values()) + sum(tot.overhead_s.values()) == pytest.approx(tot.elapsed_s)
    assert sum(tot.keep_alive_by_function_s.values()) == pytest.approx(tot.overhead_s["keep_alive"])


def test_events_out_of_order_never_hand_out_negative_time() -> None:
    t = DeviceTimeline(10.0)
    t.start_activity("a", "compute", 12.0)
    assert t.end_activity("a", 11.0) == 0.0     # an earlier clock reading is "now"
    with pytest.raises(ValueError):
        t.start_activity("x", "nap", 12.0)
    t.start_activity("b", "init", 12.0)
    with pytest.raises(ValueError):
        t.start_activity("b", "init", 12.5)


@pytest.mark.parametrize("k", [1, 2, 4, 7])
def test_a_batch_of_k_bills_each_request_its_measured_share(k: int) -> None:
    """The runtime's figure is already the request's share of the passes (1/k of a decode
    step each); the instance had the device to itself, so nothing scales it."""
    shares = [compute_share(1.6 / k, wall_s=2.0, window_s=2.0, even_s=2.0 / k) for _ in range(k)]
    assert all(s == pytest.approx(1.6 / k) for s in shares)
    assert sum(shares) == pytest.approx(1.6)


def test_a_batch_that_overlapped_other_work_is_billed_its_share_only() -> None:
    assert compute_share(1.8, wall_s=2.0, window_s=1.0, even_s=1.0) == pytest.approx(0.9)
    # a device clock that reads more than the wall share is capped at the share
    assert compute_share(5.0, 1.0, 1.0, 1.0) == pytest.approx(1.0)
    # no device measure: its even share of the instance's time, as Lambda bills duration
    assert compute_share(None, 2.0, 1.5, 0.5) == pytest.approx(0.5)
    assert compute_share(-1.0, 2.0, 1.5, 0.5) == 0.0


def test_init_phases_split_the_node_wall_time() -> None:
    phases = init_phases(5.0, {"init_s": 4.0, "imports_s": 2.5, "backbone_attach_s": 0.5, "adapter_load_s": 0.25})
    assert tuple(phases) == INIT_PHASES
    assert phases["sandbox_start"] == pytest.approx(1.0)
    assert phases["handler_init"] == pytest.approx(0.75)
    assert sum(phases.values()) == pytest.approx(5.0)
    # a runtime that reported nothing (died in init): all of it is sandbox start
    assert init_phases(3.0, {})["sandbox_start"] == pytest.approx(3.0)


def test_provisioned_idle_time_is_the_functions_and_keep_alive_instance_seconds_overlap_work() -> None:
    t = DeviceTimeline(0.0)
    t.instance_idle("held", "fp", 0.0, provisioned=True)
    t.advance(2.0)                              # only the provisioned one idle: fp's provisioned time
    t.instance_idle("ka", "fk", 2.0)
    t.advance(6.0)                              # both idle: split, half billed to fp, half keep-alive
    t.start_activity("run", "compute", 6.0)
    t.advance(8.0)                              # work runs: it gets the device, idle ones nothing
    t.end_activity("run", 8.0)
    t.instance_idle("ka", "fk", 8.0, provisioned=True)   # adopted by provisioned concurrency
    t.advance(9.0)
    tot = t.totals(9.0)
    assert tot.provisioned_by_function_s == pytest.approx({"fp": 2.0 + 2.0 + 0.5, "fk": 0.5})
    assert tot.keep_alive_by_function_s == pytest.approx({"fk": 2.0})
    assert tot.overhead_s["keep_alive"] == pytest.approx(2.0)
    # instance-seconds held by keep-alive: fk's whole unprovisioned idle time, work or not
    assert tot.idle_instance_by_function_s == pytest.approx({"fk": 6.0})
    billed_like = tot.accrued_s["compute"] + sum(tot.provisioned_by_function_s.values())
    assert billed_like + sum(tot.overhead_s.values()) == pytest.approx(tot.elapsed_s)
