from decimal import Decimal

import pytest

from slfaas.billing import counterfactuals as cf
from slfaas.billing.prices import default_prices, invocation_cost_usd
from slfaas.billing.records import NodeUsage, UsageRecord
from slfaas.errors import InvalidParameter

SHEET = default_prices()
H100 = SHEET.gpu_second_usd["H100"]


def rec(i=0, fn="f", node="n1", cold=False, tier="warm", compute_s=0.5, init_s=0.0,
        batch_s=None, batch_size=1, device_type="H100", memory_mb=1024, end_ts=None):
    billed = compute_s + init_s
    return UsageRecord(
        request_id=f"r{i}", function_name=fn, version="1", node_id=node, device="cuda:0",
        device_type=device_type, start_ts=1000.0 + i, end_ts=end_ts if end_ts is not None else 1001.0 + i,
        status="success", cold_start=cold, preload_tier=tier, batch_size=batch_size,
        batch_device_s=compute_s if batch_s is None else batch_s, compute_device_s=compute_s,
        init_device_s=init_s, runtime_overhead_s=0.01, queue_s=0.0, tokens_in=5, tokens_out=10,
        memory_mb=memory_mb, cost_usd=invocation_cost_usd(SHEET, device_type, memory_mb, billed))


def node(node_id="n1", load_s=4.0):
    return NodeUsage(node_id=node_id, device="cuda:0", device_type="H100", start_ts=0.0, end_ts=100.0,
                     elapsed_s=100.0, billed_device_s=10.0, overhead_s={"node_idle": 90.0},
                     keep_alive_by_function_s={}, backbone_bytes=1 << 30, backbone_load_s=load_s)


def test_actual_sums_stored_costs_exactly():
    records = [rec(i) for i in range(1000)]
    a = cf.actual(records)
    assert a.name == "actual"
    assert a.cost_usd == 1000 * records[0].cost_usd == Decimal("0.5487")
    assert a.device_s == pytest.approx(500.0)


def test_no_sharing_adds_load_time_per_cold_start_at_the_rate():
    records = [rec(0, cold=True, tier="cold", init_s=2.0), rec(1), rec(2, cold=True, tier="pool", init_s=0.5)]
    ns = cf.no_sharing(records, [node(load_s=4.0)], SHEET)
    a = cf.actual(records)
    assert ns.name == "no_sharing"
    assert ns.cost_usd - a.cost_usd == 2 * Decimal("4") * H100   # exactly, no request fees added
    assert ns.device_s == pytest.approx(a.device_s + 8.0)
    assert "2 cold starts" in ns.explanation and "unknown" not in ns.explanation


def test_no_sharing_unknown_node_counts_zero_and_says_so():
    records = [rec(0, cold=True, node="n9", init_s=1.0)]
    ns = cf.no_sharing(records, [node("n1")], SHEET)
    assert ns.cost_usd == cf.actual(records).cost_usd
    assert "n9" in ns.explanation and "unknown" in ns.explanation


def test_serverful_bills_one_device_per_function_for_the_window():
    records = [rec(0, fn="a"), rec(1, fn="a"), rec(2, fn="b", device_type="cpu", memory_mb=512, end_ts=5000.0),
               rec(3, fn="b", device_type="cpu", memory_mb=3538, end_ts=6000.0)]   # latest b: 3538 MB
    sf = cf.serverful(records, since_ts=0.0, until_ts=3600.0, sheet=SHEET)
    cpu_rate = SHEET.cpu_vcpu_second_usd * 2 + Decimal(3538) / 1024 * SHEET.cpu_gib_second_usd
    want = (3600 * H100).quantize(Decimal("1e-10")) + (3600 * cpu_rate).quantize(Decimal("1e-10"))
    assert sf.cost_usd == want
    assert sf.device_s == 7200.0
    assert "2 functions" in sf.explanation
    assert cf.serverful([], 0.0, 3600.0, SHEET).cost_usd == 0
    with pytest.raises(InvalidParameter):
        cf.serverful(records, 10.0, 5.0, SHEET)


def test_savings():
    a = cf.Counterfactual("actual", Decimal("1"), 1.0, "")
    o = cf.Counterfactual("serverful", Decimal("4"), 4.0, "")
    assert cf.savings(a, o) == (Decimal("3"), 0.75)
    assert cf.savings(a, cf.Counterfactual("x", Decimal(0), 0.0, "")) == (Decimal(-1), 0.0)
    saved, frac = cf.savings(o, a)
    assert saved == Decimal(-3) and frac == -3.0


def test_batching_saved_device_s():
    assert cf.batching_saved_device_s([rec(i) for i in range(5)]) == 0.0
    # A batch of 4 taking 2 s: each billed 0.5 s, each would have taken ~2 s alone.
    batch = [rec(i, compute_s=0.5, batch_s=2.0, batch_size=4) for i in range(4)]
    assert cf.batching_saved_device_s(batch) == pytest.approx(6.0)
    # overlapping single requests (billed a share of their device time) are not batching
    overlapped = [rec(i, compute_s=0.5, batch_s=1.0, batch_size=1) for i in range(4)]
    assert cf.batching_saved_device_s(overlapped) == 0.0


def test_preload_saved_s():
    cold = [rec(i, cold=True, tier="cold", init_s=s) for i, s in enumerate((3.0, 5.0, 10.0))]  # median 5
    pool = [rec(10, cold=True, tier="pool", init_s=1.0), rec(11, cold=True, tier="pool", init_s=6.0)]
    warm = [rec(20, tier="pool", init_s=0.0)]   # not a cold start: ignored
    assert cf.preload_saved_s(cold + pool + warm) == pytest.approx(4.0)   # 4 + max(0, -1)
    assert cf.preload_saved_s(pool) == 0.0
    assert cf.preload_saved_s([]) == 0.0
