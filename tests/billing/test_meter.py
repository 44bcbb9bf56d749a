"""The node meter: agent events in, usage records and node usage out (fake clock)."""
from __future__ import annotations

import json
from decimal import Decimal

import pytest

from slfaas.billing.meter import InvocationFacts, Meter
from slfaas.billing.prices import default_prices, invocation_cost_usd


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def facts(rid: str, iid: str, cold: bool, dispatch: float, end: float, device_ms: float | None = 400.0,
          error: str | None = None, **kw) -> InvocationFacts:
    metrics = None if device_ms is None else {"device_ms": device_ms}   # the runtime's, beside the body
    body = kw.get("body") or json.dumps({"text": "x", "usage": {"prompt_tokens": 7, "completion_tokens": 3}})
    return InvocationFacts(request_id=rid, function_name=kw.get("fn", "fa"), version="$LATEST", memory_mb=2048,
                           instance_id=iid, cold_start=cold, preloaded=kw.get("preloaded", False),
                           submitted_ts=kw.get("submitted", dispatch), dispatch_ts=dispatch, end_ts=end,
                           error_type=error, payload=body.encode(), metrics=metrics)


def test_cold_then_warm_invocation_records_and_conservation() -> None:
    clock = Clock()
    got = []
    m = Meter("n1", "cpu", default_prices(), on_usage=got.append, clock=clock)
    m.backbone_resident(1, 250_000_000, 0.8)
    m.instance_starting("i1", 1001.0)
    m.instance_ready("i1", 1005.0, 4.0)
    m.invocation_started("r1", "i1", 1005.0)
    cold = m.invocation_finished(facts("r1", "i1", True, 1005.0, 1006.0, submitted=1001.0),
                                 {"init_s": 3.0, "imports_s": 2.0, "adapter_load_s": 0.5})
    m.instance_idle("i1", "fa", 1006.0)
    m.invocation_started("r2", "i1", 1010.0)
    warm = m.invocation_finished(facts("r2", "i1", False, 1010.0, 1010.5, device_ms=300.0), {})
    m.instance_idle("i1", "fa", 1010.5)
    m.instance_gone("i1", 1012.0)
    assert got == [cold, warm]
    assert cold.init_device_s == pytest.approx(4.0) and cold.compute_device_s == pytest.approx(0.4)
    assert cold.preload_tier == "cold" and cold.queue_s == pytest.approx(4.0)
    assert cold.init_phases_s["sandbox_start"] == pytest.approx(1.0)
    assert cold.tokens_in == 7 and cold.tokens_out == 3
    assert warm.init_device_s == 0.0 and warm.preload_tier == "warm"
    assert warm.compute_device_s == pytest.approx(0.3) and warm.runtime_overhead_s == pytest.approx(0.2)
    assert warm.cost_usd == invocation_cost_usd(default_prices(), "cpu", 2048, 0.3)
    snap = m.snapshot(1020.0)
    assert snap.elapsed_s == pytest.approx(20.0)
    assert snap.billed_device_s == pytest.approx(cold.billed_device_s + warm.billed_device_s)
    assert snap.billed_device_s + snap.overhead_total_s == pytest.approx(snap.elapsed_s)
    assert snap.overhead_s["keep_alive"] == pytest.approx(4.0 + 1.5)
    assert snap.keep_alive_by_function_s == pytest.approx({"fa": 5.5})
    assert snap.backbone_bytes == 250_000_000 and snap.backbone_load_s == 0.8


def test_overlapping_invocations_never_bill_more_than_the_wall_time() -> None:
    clock = Clock()
    m = Meter("n1", "cpu", default_prices(), clock=clock)
    m.invocation_started("a", "i1", 1000.0)
    m.invocation_started("b", "i2", 1000.0)
    a = m.invocation_finished(facts("a", "i1", False, 1000.0, 1002.0, device_ms=2000.0), {})
    b = m.invocation_finished(facts("b", "i2", False, 1000.0, 1002.0, device_ms=2000.0), {})
    assert a.compute_device_s == pytest.approx(1.0) and b.compute_device_s == pytest.approx(1.0)
    snap = m.snapshot(1002.0)
    assert snap.billed_device_s == pytest.approx(2.0) == pytest.approx(snap.elapsed_s)


def test_pool_tier_errors_and_handlers_without_device_metrics() -> None:
    m = Meter("n1", "cpu", default_prices(), clock=Clock())
    m.instance_starting("p", 1000.0)
    m.instance_ready("p", 1000.5, 0.5)
    m.invocation_started("r", "p", 1000.5)
    rec = m.invocation_finished(facts("r", "p", True, 1000.5, 1001.5, device_ms=None, preloaded=True), {})
    assert rec.preload_tier == "pool" and rec.init_device_s == pytest.approx(0.5)
    assert rec.compute_device_s == pytest.approx(1.0)   # no device clock: billed its duration, like Lambda
    m.invocation_started("e", "p", 1002.0)
    err = m.invocation_finished(facts("e", "p", False, 1002.0, 1003.0, error="Runtime.ExitError"), {})
    assert err.status == "function_error" and err.compute_device_s == pytest.approx(1.0)


def test_a_failing_usage_sink_never_fails_the_invocation() -> None:
    def broken(_rec):
        raise RuntimeError("db down")
    m = Meter("n1", "cpu", default_prices(), on_usage=broken, clock=Clock())
    m.invocation_started("r", "i", 1000.0)
    rec = m.invocation_finished(facts("r", "i", False, 1000.0, 1001.0), {})
    assert rec.cost_usd > Decimal(0)


def test_an_unpriced_device_fails_at_start_with_the_key_to_add() -> None:
    from slfaas.billing.prices import UnknownDeviceType
    with pytest.raises(UnknownDeviceType, match="B300"):
        Meter("n1", "cuda:0", default_prices(), gpu_name="NVIDIA B300", clock=Clock())
    assert Meter("n1", "cuda:0", default_prices(), gpu_name="NVIDIA H100 80GB HBM3", clock=Clock()).device_type == "H100"


def test_the_handler_cannot_set_its_own_bill_and_odd_numbers_never_fail() -> None:
    m = Meter("n1", "cpu", default_prices(), clock=Clock())
    m.invocation_started("r", "i", 1000.0)
    forged = json.dumps({"metrics": {"device_ms": 0, "batch_size": 1000},
                         "usage": {"prompt_tokens": 1e999, "completion_tokens": -5}})
    rec = m.invocation_finished(facts("r", "i", False, 1000.0, 1010.0, device_ms=None, body=forged), {})
    assert rec.compute_device_s == pytest.approx(10.0) and rec.batch_size == 1   # body metrics ignored
    assert rec.tokens_in == 0 and rec.tokens_out == 0
    # the runtime's own figure is capped at the wall time
    m.invocation_started("r2", "i", 1011.0)
    rec2 = m.invocation_finished(facts("r2", "i", False, 1011.0, 1012.0, device_ms=5e6), {})
    assert rec2.compute_device_s == pytest.approx(1.0)


def test_an_aborted_invocation_stops_sharing_the_device() -> None:
    m = Meter("n1", "cpu", default_prices(), clock=Clock())
    m.invocation_started("lost", "i1", 1000.0)
    m.invocation_aborted("lost", 1001.0)
    m.invocation_aborted("lost", 1001.5)          # twice: no-op
    m.invocation_started("r", "i2", 1002.0)
    rec = m.invocation_finished(facts("r", "i2", False, 1002.0, 1004.0, device_ms=2000.0), {})
    assert rec.compute_device_s == pytest.approx(2.0)   # not halved by a zombie activity
    snap = m.snapshot(1004.0)
    assert snap.overhead_s["runtime"] == pytest.approx(1.0)
    assert snap.billed_device_s + snap.overhead_total_s == pytest.approx(snap.elapsed_s)


def test_init_ended_by_two_threads_is_accounted_once() -> None:
    m = Meter("n1", "cpu", default_prices(), clock=Clock())
    m.instance_starting("i", 1000.0)
    m.instance_gone("i", 1002.0)                  # the watcher: the sandbox died in init
    m.instance_ready("i", 1002.1, 2.1)            # the invoking thread, a moment later: no KeyError
    rec = m.invocation_finished(facts("r", "i", True, 1002.1, 1002.1, error="Runtime.ExitError"), {})
    assert rec.init_device_s == pytest.approx(2.0)


def test_inits_started_ahead_of_requests_are_provisioned_or_preload_never_in_flight() -> None:
    clock = Clock()
    m = Meter("n1", "cpu", default_prices(), clock=clock)
    m.instance_starting("p1", 1000.0)           # provisioned: its init is billed to its function
    m.instance_starting("w1", 1000.0)           # pre-warmed by keep-alive: pre-loading overhead
    m.instance_ready("p1", 1002.0, 2.0)
    m.instance_prestarted("p1", "fp", provisioned=True)
    m.instance_ready("w1", 1003.0, 3.0)
    m.instance_prestarted("w1", "fw", provisioned=False)
    m.instance_idle("p1", "fp", 1003.0, provisioned=True)
    m.instance_idle("w1", "fw", 1003.0)
    m.invocation_started("r1", "p1", 1005.0)    # its first invocation is warm: no init billed
    rec = m.invocation_finished(facts("r1", "p1", False, 1005.0, 1006.0, fn="fp", device_ms=1000.0), {})
    m.instance_idle("p1", "fp", 1006.0, provisioned=True)
    clock.t = 1008.0
    snap = m.snapshot()
    assert rec.init_device_s == 0.0 and rec.preload_tier == "warm"
    # init 1000-1002 shared by two inits (1 s each), 1002-1003 w1 alone (1 s); then idle split
    assert snap.provisioned_by_function_s == pytest.approx({"fp": 1.0 + 1.0 + 1.0})
    assert snap.overhead_s["preload"] == pytest.approx(2.0)
    assert snap.overhead_s["keep_alive"] == pytest.approx(2.0) and snap.overhead_s["in_flight"] == 0.0
    assert snap.idle_instance_by_function_s == pytest.approx({"fw": 5.0})   # 1003-1008, work or not
    assert snap.billed_device_s + snap.provisioned_s + snap.overhead_total_s == pytest.approx(snap.elapsed_s)
