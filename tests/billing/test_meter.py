"""The node meter: agent events in, usage records and node usage out (fake clock)."""
from __future__ import annotations

import json
from dataclasses import replace
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


def test_token_counts_come_from_the_metrics_or_the_body_whichever_has_them() -> None:
    """A buffered response's metrics carry the prompt length alone (for the scheduler): the
    completion count still comes from the body; a stream's trailer has both."""
    m = Meter("n1", "cpu", default_prices(), clock=Clock())
    m.invocation_started("r", "i", 1000.0)
    f = facts("r", "i", False, 1000.0, 1001.0)
    buffered = m.invocation_finished(replace(f, metrics={"device_ms": 400.0, "prompt_tokens": 9}), {})
    assert (buffered.tokens_in, buffered.tokens_out) == (9, 3)
    m.invocation_started("s", "i", 1002.0)
    trailer = {"device_ms": 400.0, "prompt_tokens": 4, "completion_tokens": 6}
    streamed = m.invocation_finished(replace(facts("s", "i", False, 1002.0, 1003.0, body="chunks"), metrics=trailer), {})
    assert (streamed.tokens_in, streamed.tokens_out) == (4, 6)


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


def batched(rid: str, iid: str, dispatch: float, end: float, share_ms: float | None, passes_ms: float,
            k: int) -> InvocationFacts:
    f = facts(rid, iid, False, dispatch, end, device_ms=share_ms)
    metrics = None if share_ms is None else {"device_ms": share_ms, "batch_device_ms": passes_ms, "batch_size": k}
    return InvocationFacts(**{**f.__dict__, "metrics": metrics, "batch_size": k})


def test_a_batch_is_one_activity_and_each_request_is_billed_its_share() -> None:
    """Three requests in one instance at once, a fourth instance alone beside them for a while:
    the batch competes as ONE activity (half the device while both run), each request is
    billed its measured token share scaled by that, and billed + overhead = elapsed."""
    m = Meter("n1", "cpu", default_prices(), clock=Clock())
    for rid in ("a", "b", "c"):
        m.invocation_started(rid, "batch", 1000.0)
    m.invocation_started("solo", "other", 1000.0)
    solo = m.invocation_finished(facts("solo", "other", False, 1000.0, 1002.0, device_ms=2000.0), {})
    assert solo.compute_device_s == pytest.approx(1.0)          # half of 2 s: the batch had the other half
    # a: the prefill-heavy one, 1.2 s of the 3.6 s of passes; b and c: 0.4 s each; all saw 4 s of wall
    a = m.invocation_finished(batched("a", "batch", 1000.0, 1004.0, 1200.0, 3600.0, 3), {})
    b = m.invocation_finished(batched("b", "batch", 1000.0, 1004.0, 400.0, 3600.0, 3), {})
    assert a.batch_size == b.batch_size == 3 and a.batch_device_s == pytest.approx(3.6)
    # the batch's window: 1 s (half of 2 s) + 2 s alone = 3 s of 4 s wall
    assert a.compute_device_s == pytest.approx(1.2 * 3 / 4) and b.compute_device_s == pytest.approx(0.4 * 3 / 4)
    # c failed: no device measure, billed its even share of the batch's 3 s
    c = m.invocation_finished(batched("c", "batch", 1000.0, 1004.0, None, 3600.0, 3), {})
    assert c.compute_device_s == pytest.approx(1.0)
    snap = m.snapshot(1004.0)
    assert snap.billed_device_s == pytest.approx(1.0 + 0.9 + 0.3 + 1.0)
    assert snap.overhead_s["runtime"] == pytest.approx(4.0 - 3.2)  # what the two instances accrued, unbilled
    assert snap.overhead_s["in_flight"] == pytest.approx(0.0)
    assert snap.billed_device_s + snap.overhead_total_s == pytest.approx(snap.elapsed_s)


def test_a_batch_never_bills_more_than_it_accrued_and_members_come_and_go() -> None:
    m = Meter("n1", "cpu", default_prices(), clock=Clock())
    m.invocation_started("a", "i", 1000.0)
    m.invocation_started("b", "i", 1001.0)                 # joins a running batch
    # a claims more device time than its wall time: capped at its window (the batch's 2 s)
    a = m.invocation_finished(batched("a", "i", 1000.0, 1002.0, 2500.0, 2500.0, 2), {})
    assert a.compute_device_s == pytest.approx(2.0)
    m.invocation_started("c", "i", 1002.0)
    # b claims 1.5 s of its 2 s window, but the batch accrued 3 s and a was billed 2 of them
    b = m.invocation_finished(batched("b", "i", 1001.0, 1003.0, 1500.0, 2000.0, 2), {})
    assert b.compute_device_s == pytest.approx(1.0)
    m.invocation_aborted("c", 1003.5)
    assert m.invocation_finished(batched("c", "i", 1002.0, 1003.5, 500.0, 500.0, 1), {}).compute_device_s == 0.0
    snap = m.snapshot(1004.0)
    assert snap.billed_device_s == pytest.approx(3.0)
    assert snap.overhead_s["runtime"] == pytest.approx(0.5) and snap.overhead_s["in_flight"] == pytest.approx(0.0)
    assert snap.billed_device_s + snap.overhead_total_s == pytest.approx(snap.elapsed_s)


def test_instance_lives_are_recorded_from_start_to_end() -> None:
    """What a serverless baseline bills: each instance's life, its init end, the device memory
    it held and how many invocations it served; emitted when it ends, listed while alive."""
    clock = Clock()
    ended = []
    m = Meter("n1", "cpu", default_prices(), clock=clock, on_instance_usage=ended.append)
    m.instance_starting("i1", 1001.0, "fa", "$LATEST", 2048)
    m.instance_starting("i2", 1002.0, "fb", "3", 1024)
    m.instance_ready("i1", 1005.0, 4.0)
    m.invocation_started("r1", "i1", 1005.0)
    m.invocation_finished(facts("r1", "i1", True, 1005.0, 1006.0), {})
    m.instance_measured("i1", 13_500.0, measured=True)
    m.invocation_started("r2", "i1", 1007.0)
    m.invocation_finished(facts("r2", "i1", False, 1007.0, 1008.0), {})
    live = m.live_instances()
    assert [i.instance_id for i in live] == ["i1", "i2"] and all(i.end_ts is None for i in live)
    m.instance_gone("i1", 1020.0)
    m.instance_gone("i2", 1003.0)     # never ready: its init ended with it
    m.instance_gone("nobody", 1004.0)  # not known: nothing recorded
    assert m.live_instances() == []
    by_id = {i.instance_id: i for i in ended}
    assert set(by_id) == {"i1", "i2"}
    i1, i2 = by_id["i1"], by_id["i2"]
    assert (i1.function_name, i1.version, i1.memory_mb, i1.node_id) == ("fa", "$LATEST", 2048, "n1")
    assert (i1.start_ts, i1.ready_ts, i1.end_ts) == (1001.0, 1005.0, 1020.0)
    assert i1.device_mb == 13_500.0 and i1.device_mb_measured and i1.invocations == 2
    assert i2.ready_ts is None and i2.end_ts == 1003.0 and i2.device_mb is None and i2.invocations == 0
    assert i1.alive_s(1000.0, 1010.0) == pytest.approx(9.0) and i1.alive_s(1030.0, 1040.0) == 0.0
