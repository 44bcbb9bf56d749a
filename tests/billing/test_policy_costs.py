"""One cost definition for runs of different policies: what the user pays as each platform
bills, and what the provider's node spends, from the run's own records."""
from __future__ import annotations

from decimal import Decimal

import pytest

from slfaas.billing.policy_costs import container_share, policy_cost, provider_device_s
from slfaas.billing.prices import default_prices, device_second_usd, invocation_cost_usd
from slfaas.billing.records import InstanceUsage, NodeUsage, UsageRecord

SHEET = default_prices()
H200_MB = 141 * 1024


def life(iid: str, start: float, end: float | None, device_mb: float | None = 13.5 * 1024,
         device_type: str = "H200", memory_mb: int = 16384) -> InstanceUsage:
    return InstanceUsage(iid, "f", "$LATEST", "n", "cuda:0" if device_type != "cpu" else "cpu", device_type,
                         memory_mb, start, end, start + 5, device_mb, device_mb is not None, 1)


def usage(rid: str, billed_s: float, device_type: str = "H200") -> UsageRecord:
    return UsageRecord(request_id=rid, function_name="f", version="$LATEST", node_id="n", device="cuda:0",
                       device_type=device_type, start_ts=100.0, end_ts=101.0, status="success", cold_start=False,
                       preload_tier="warm", batch_size=1, batch_device_s=billed_s, compute_device_s=billed_s,
                       init_device_s=0.0, runtime_overhead_s=0.0, queue_s=0.0, tokens_in=1, tokens_out=1,
                       memory_mb=16384, cost_usd=invocation_cost_usd(SHEET, device_type, 16384, billed_s))


def node(start: float, end: float) -> NodeUsage:
    return NodeUsage("n", "cuda:0", "H200", start, end, end - start, 0.0, {}, {})


def test_a_container_pays_its_memory_share_of_the_gpu_while_alive() -> None:
    # 13.5 GB of a 141 GB H200 is 9.6 % of the GPU's price per second
    assert container_share(life("a", 0, 10), H200_MB, None) == pytest.approx(0.0957, abs=1e-4)
    lives = [life("a", 90.0, 150.0), life("b", 120.0, None), life("gone", 10.0, 50.0)]
    cost = policy_cost("container", SHEET, device_type="H200", memory_mb=16384, since_ts=100.0, until_ts=200.0,
                       usage=[usage("r1", 0.2), usage("r2", 0.3)], instances=lives, nodes=[node(0.0, 300.0)],
                       device_total_mb=H200_MB)
    share = 13.5 / 141
    # a: 50 s inside the window (its start before it is not billed); b: alive to the window's end (80 s)
    assert cost.user_device_s == pytest.approx((50 + 80) * share)
    expected = (invocation_cost_usd(SHEET, "H200", 16384, 50 * share, requests=0)
                + invocation_cost_usd(SHEET, "H200", 16384, 80 * share, requests=0) + 2 * SHEET.request_usd)
    assert cost.user_usd == expected and cost.containers == 2 and cost.requests == 2
    assert cost.provider_device_s == pytest.approx(100.0) and cost.window_s == 100.0
    assert cost.provider_usd == invocation_cost_usd(SHEET, "H200", 16384, 100.0, requests=0)


def test_an_unmeasured_container_pays_the_largest_measured_share_and_none_known_is_an_error() -> None:
    lives = [life("a", 0.0, 10.0, device_mb=14_000.0), life("b", 0.0, 10.0, device_mb=None)]
    cost = policy_cost("container", SHEET, device_type="H200", memory_mb=16384, since_ts=0.0, until_ts=10.0,
                       instances=lives, device_total_mb=H200_MB)
    assert cost.user_device_s == pytest.approx(2 * 10 * 14_000 / H200_MB)
    with pytest.raises(ValueError, match="device memory of instance b is not known"):
        policy_cost("container", SHEET, device_type="H200", memory_mb=16384, since_ts=0.0, until_ts=10.0,
                    instances=lives[1:], device_total_mb=H200_MB)


def test_on_cpu_a_container_pays_for_its_memory_size() -> None:
    lives = [life("a", 0.0, 30.0, device_mb=None, device_type="cpu", memory_mb=2048)]
    cost = policy_cost("container", SHEET, device_type="cpu", memory_mb=2048, since_ts=0.0, until_ts=20.0,
                       instances=lives)
    assert cost.user_device_s == 20.0
    assert cost.user_usd == invocation_cost_usd(SHEET, "cpu", 2048, 20.0, requests=0)


def test_slfaas_pays_its_records_and_serverful_the_whole_device() -> None:
    recs = [usage("r1", 0.25), usage("r2", 0.5)]
    own = policy_cost("per-request", SHEET, device_type="H200", memory_mb=16384, since_ts=0.0, until_ts=60.0,
                      usage=recs, nodes=[node(0.0, 60.0)])
    assert own.user_usd == recs[0].cost_usd + recs[1].cost_usd and own.user_device_s == pytest.approx(0.75)
    full = policy_cost("whole-device", SHEET, device_type="H200", memory_mb=16384, since_ts=0.0, until_ts=60.0,
                       usage=recs, nodes=[node(0.0, 60.0)])
    assert full.user_usd == Decimal(60) * device_second_usd(SHEET, "H200", 16384) and full.requests == 0
    assert own.provider_usd == full.provider_usd   # the same node for the same window


def test_provider_time_is_the_sessions_overlap_with_the_window_and_bad_input_is_refused() -> None:
    assert provider_device_s([node(0.0, 50.0), node(60.0, 200.0)], 40.0, 100.0) == pytest.approx(50.0)
    with pytest.raises(ValueError, match="billing must be one of"):
        policy_cost("free", SHEET, device_type="H200", memory_mb=1, since_ts=0.0, until_ts=1.0)
    with pytest.raises(ValueError, match="before its start"):
        policy_cost("container", SHEET, device_type="H200", memory_mb=1, since_ts=5.0, until_ts=1.0)


def test_containers_billed_through_their_keep_alive_after_the_window() -> None:
    """The harness waited for keep-alive to end the containers: each pays its whole life from
    the window's start, the part after the window reported apart; the provider's cost stays
    the window's."""
    lives = [life("a", 90.0, 260.0), life("b", 150.0, 230.0), life("c", 120.0, None)]
    within = policy_cost("container", SHEET, device_type="H200", memory_mb=16384, since_ts=100.0, until_ts=200.0,
                         instances=lives, nodes=[node(0.0, 300.0)], device_total_mb=H200_MB)
    whole = policy_cost("container", SHEET, device_type="H200", memory_mb=16384, since_ts=100.0, until_ts=200.0,
                        instances=lives, nodes=[node(0.0, 300.0)], device_total_mb=H200_MB, lives_until_ts=270.0)
    share = container_share(lives[0], H200_MB, None)
    assert within.after_window_device_s == 0.0
    assert within.user_device_s == pytest.approx((100 + 50 + 80) * share)
    assert whole.after_window_device_s == pytest.approx((60 + 30 + 70) * share)
    assert whole.user_device_s == pytest.approx(within.user_device_s + whole.after_window_device_s)
    assert whole.provider_device_s == within.provider_device_s == pytest.approx(100.0)
    assert whole.user_usd > within.user_usd and "keep-alive after the window" in whole.explanation
    for bad in (150.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="no earlier than the window's end"):
            policy_cost("container", SHEET, device_type="H200", memory_mb=16384, since_ts=100.0, until_ts=200.0,
                        instances=lives, device_total_mb=H200_MB, lives_until_ts=bad)
