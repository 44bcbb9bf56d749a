import calendar
import csv
import io
import json
import math
import random
from decimal import Decimal
from html.parser import HTMLParser

import pytest

from slfaas.billing.budgets import Budget, evaluate
from slfaas.billing.prices import default_prices, invocation_cost_usd
from slfaas.billing.records import NodeUsage, UsageRecord
from slfaas.billing.report_html import render_html
from slfaas.billing.report_render import (ROW_FIELDS, render_csv, render_json, render_table, report_from_dict,
                                          report_to_dict)
from slfaas.billing.reports import build_report, split_cost
from slfaas.errors import InvalidParameter

SHEET = default_prices()
T0 = float(calendar.timegm((2026, 11, 23, 8, 0, 0)))   # 2026-11-23T08:00Z
FNS = ("alpha", "beta", "gamma")


def rec(i, fn="alpha", version="1", end_ts=None, compute_s=0.3, init_s=0.0, node="n1", device_type="H100",
        memory_mb=2048, status="success", batch_size=1, batch_s=None, tier=None):
    billed = compute_s + init_s
    end = T0 + 10 + i if end_ts is None else end_ts
    return UsageRecord(
        request_id=f"r{i:06d}", function_name=fn, version=version, node_id=node,
        device="cpu" if device_type == "cpu" else "cuda:0", device_type=device_type, start_ts=end - billed - 0.01,
        end_ts=end, status=status, cold_start=init_s > 0, preload_tier=tier or ("cold" if init_s > 0 else "warm"),
        batch_size=batch_size, batch_device_s=compute_s * batch_size if batch_s is None else batch_s,
        compute_device_s=compute_s, init_device_s=init_s, runtime_overhead_s=0.002, queue_s=0.0,
        tokens_in=7, tokens_out=11, memory_mb=memory_mb,
        cost_usd=invocation_cost_usd(SHEET, device_type, memory_mb, billed))


def many_records(n=3000, seed=1, span_s=5 * 3600):
    rng = random.Random(seed)
    out = []
    for i in range(n):
        init = rng.uniform(0.5, 6.0) if rng.random() < 0.05 else 0.0
        out.append(rec(i, fn=rng.choice(FNS), version=rng.choice(("1", "2")), end_ts=T0 + rng.uniform(0, span_s),
                       compute_s=rng.uniform(0.0001, 0.8), init_s=init,
                       status="success" if rng.random() > 0.02 else "function_error",
                       batch_size=rng.choice((1, 2, 4))))
    return out


def node_for(records, elapsed_s=None, node_id="n1", keep_alive=None, backbone_load_s=5.0):
    billed = math.fsum(r.billed_device_s for r in records if r.node_id == node_id)
    elapsed = elapsed_s if elapsed_s is not None else billed * 3 + 100
    ka = keep_alive if keep_alive is not None else {fn: (elapsed - billed) * 0.1 for fn in FNS}
    ka_s = math.fsum(ka.values())
    rest = elapsed - billed - ka_s
    overhead = {"keep_alive": ka_s, "preload": rest * 0.25, "idle_backbone": rest * 0.5, "runtime": 0.0}
    overhead["node_idle"] = elapsed - billed - math.fsum(overhead.values())
    return NodeUsage(node_id, "cuda:0", "H100", T0, T0 + elapsed, elapsed, billed, overhead, ka,
                     backbone_bytes=1 << 30, backbone_load_s=backbone_load_s)


def report_of(records, nodes=None, group_by="function", **kw):
    nodes = [node_for(records)] if nodes is None else nodes
    kw.setdefault("since_ts", T0)
    kw.setdefault("until_ts", T0 + 6 * 3600)
    return build_report(records, nodes, SHEET, group_by=group_by, **kw)


def warning_status():
    return evaluate(Budget.create("daily", "1.00", "day"), Decimal("0.85"), T0 + 6 * 3600)


# ---- totals and grouping ---------------------------------------------------------------------

def test_total_is_the_exact_sum_of_record_costs():
    records = many_records()
    assert all(r.cost_usd < Decimal("0.01") for r in records)   # sub-cent costs
    report = report_of(records)
    exact = sum((r.cost_usd for r in records), Decimal(0))
    assert report.total.cost_usd == exact == report.billed_cost_usd
    assert sum((r.cost_usd for r in report.rows), Decimal(0)) == exact
    # the float sum drifts, the Decimal sum does not
    assert report.total.invocations == len(records)
    assert report.total.billed_device_s == pytest.approx(math.fsum(r.billed_device_s for r in records))
    # the series adds up to the total, too
    assert sum((v for vs in report.series.values() for v in vs), Decimal(0)) == exact
    # TOTAL's cents in the table are those of the exact total
    assert f"${exact.quantize(Decimal('0.000001')):,.6f}" in render_table(report).split("TOTAL", 1)[1].splitlines()[0]


@pytest.mark.parametrize("group_by", ["function", "version", "hour", "day"])
def test_group_keys_and_counts(group_by):
    records = many_records(600)
    report = report_of(records, group_by=group_by)
    keys = [r.key for r in report.rows]
    assert keys == sorted(keys)
    if group_by == "function":
        expected = {fn: sum(1 for r in records if r.function_name == fn) for fn in FNS}
    elif group_by == "version":
        expected = {}
        for r in records:
            expected[f"{r.function_name}:{r.version}"] = expected.get(f"{r.function_name}:{r.version}", 0) + 1
    elif group_by == "hour":
        expected = {}
        for r in records:
            k = f"2026-11-23T{8 + int((r.end_ts - T0) // 3600):02d}:00Z"
            expected[k] = expected.get(k, 0) + 1
    else:
        expected = {"2026-11-23": len(records)}
    assert {r.key: r.invocations for r in report.rows} == expected
    for row in report.rows:
        mine = [r for r in records if _key(r, group_by) == row.key]
        assert row.cost_usd == sum((r.cost_usd for r in mine), Decimal(0))
        assert row.cold_starts == sum(r.cold_start for r in mine)
        assert row.errors == sum(r.status != "success" for r in mine)
        assert row.tokens_in == 7 * len(mine) and row.tokens_out == 11 * len(mine)
        if group_by != "function":
            assert row.keep_alive_s == 0.0
    assert report.total.key == "TOTAL"


def _key(r, group_by):
    if group_by == "function":
        return r.function_name
    if group_by == "version":
        return f"{r.function_name}:{r.version}"
    if group_by == "hour":
        return f"2026-11-23T{8 + int((r.end_ts - T0) // 3600):02d}:00Z"
    return "2026-11-23"


def test_keep_alive_per_function_and_function_only_held():
    records = [rec(0, fn="alpha"), rec(1, fn="beta")]
    node = node_for(records, elapsed_s=100.0, keep_alive={"alpha": 3.0, "beta": 2.0, "idle-fn": 4.0})
    report = report_of(records, [node])
    rows = {r.key: r for r in report.rows}
    assert rows["alpha"].keep_alive_s == 3.0 and rows["idle-fn"].keep_alive_s == 4.0
    assert rows["idle-fn"].invocations == 0 and rows["idle-fn"].cost_usd == 0
    assert report.total.keep_alive_s == 9.0
    assert {s.function_name for s in report.function_splits} == {"alpha", "beta", "idle-fn"}


def test_window_and_function_filter_by_end_time():
    records = [rec(0, end_ts=T0 - 1), rec(1, end_ts=T0), rec(2, end_ts=T0 + 3600 - 1e-3),
               rec(3, end_ts=T0 + 3600), rec(4, fn="beta", end_ts=T0 + 5)]
    report = report_of(records, since_ts=T0, until_ts=T0 + 3600)
    assert report.total.invocations == 3
    only = report_of(records, since_ts=T0, until_ts=T0 + 3600, function_name="alpha")
    assert [r.key for r in only.rows] == ["alpha"] and only.total.invocations == 2
    # the node view still covers every function on the node
    assert only.records_billed_device_s == report.records_billed_device_s


def test_bad_group_by_and_window():
    with pytest.raises(InvalidParameter):
        report_of([], group_by="week")
    with pytest.raises(InvalidParameter):
        report_of([], since_ts=T0 + 10, until_ts=T0)


# ---- cost split ---------------------------------------------------------------------------------

def test_init_and_compute_split_adds_up_exactly():
    records = many_records(2000, seed=3)
    report = report_of(records)
    for row in (*report.rows, report.total):
        assert row.compute_cost_usd + row.init_cost_usd == row.cost_usd
        assert row.init_cost_usd >= 0 and row.compute_cost_usd >= 0
    assert report.total.init_cost_usd > 0
    for s in report.function_splits:
        row = next(r for r in report.rows if r.key == s.function_name)
        assert (s.compute_cost_usd, s.init_cost_usd) == (row.compute_cost_usd, row.init_cost_usd)


def test_split_of_one_record_is_proportional_with_fee_on_compute():
    r = rec(0, compute_s=1.0, init_s=3.0)
    compute, init = split_cost(r, SHEET.request_usd)
    assert compute + init == r.cost_usd
    device = r.cost_usd - SHEET.request_usd
    assert init == (device * 3 / 4).quantize(Decimal("1e-10"))
    assert split_cost(rec(1, compute_s=0.5), SHEET.request_usd) == (rec(1, compute_s=0.5).cost_usd, 0)


def test_idle_split_covers_the_node_overhead():
    records = many_records(300)
    node = node_for(records)
    report = report_of(records, [node])
    assert math.fsum(s.idle_s for s in report.function_splits) == pytest.approx(node.overhead_total_s)
    assert sum((s.idle_cost_usd for s in report.function_splits), Decimal(0)) == \
        pytest.approx(report.platform_overhead_usd, abs=Decimal("1e-8"))


# ---- node view and conservation ----------------------------------------------------------------

def _node(elapsed, billed, overhead):
    return NodeUsage("n1", "cuda:0", "H100", T0, T0 + elapsed, elapsed, billed, {"node_idle": overhead}, {})


@pytest.mark.parametrize("overhead, error", [(40.0, 0.0), (39.0, 0.01), (41.0, 0.01)])
def test_conservation_error(overhead, error):
    records = [rec(i, compute_s=6.0) for i in range(10)]          # 60 billed device-seconds
    report = report_of(records, [_node(100.0, 60.0, overhead)])
    assert report.records_billed_device_s == pytest.approx(60.0)
    assert report.node_elapsed_s == 100.0
    assert report.platform_overhead_s == overhead
    assert report.conservation_error == pytest.approx(error)
    assert report.billed_mismatch == pytest.approx(0.0)


def test_node_view_prices_the_node_time():
    records = [rec(i, compute_s=6.0) for i in range(10)]
    report = report_of(records, [_node(100.0, 60.0, 40.0)])
    rate = SHEET.gpu_second_usd["H100"]
    assert report.node_cost_usd == rate * 100 + SHEET.request_usd * 10
    assert report.platform_overhead_usd == rate * 40
    assert report.node_gap_usd == report.node_cost_usd - report.billed_cost_usd
    assert report.overhead_by_kind_s == {"node_idle": 40.0}


def test_cpu_node_priced_at_the_records_median_memory():
    records = [rec(i, device_type="cpu", memory_mb=m, compute_s=1.0) for i, m in enumerate((1024, 2048, 4096))]
    node = NodeUsage("n1", "cpu", "cpu", T0, T0 + 10, 10.0, 3.0, {"node_idle": 7.0}, {})
    report = report_of(records, [node])
    assert report.node_cost_usd == invocation_cost_usd(SHEET, "cpu", 2048, 10.0, requests=3)


def test_counterfactuals_and_savings():
    records = [rec(0, init_s=2.0), *(rec(i, batch_size=4) for i in range(1, 20))]
    report = report_of(records, [node_for(records, backbone_load_s=5.0)])
    names = [c.name for c in report.counterfactuals]
    assert names == ["actual", "no_sharing", "serverful"]
    actual, no_sharing, serverful = report.counterfactuals
    assert actual.cost_usd == report.total.cost_usd
    assert no_sharing.cost_usd > actual.cost_usd and serverful.cost_usd > no_sharing.cost_usd
    saved, frac = report.savings["serverful"]
    assert saved == serverful.cost_usd - actual.cost_usd and 0 < frac < 1
    assert report.batching_saved_device_s == pytest.approx(19 * 0.3 * 3)


# ---- series -------------------------------------------------------------------------------------

def test_series_hourly_or_per_minute():
    records = many_records(500)
    hourly = report_of(records)
    assert hourly.series_step_s == 3600 and len(hourly.series_buckets) == 6
    assert hourly.series_buckets[0] == "2026-11-23T08:00Z"
    assert set(hourly.series) == set(FNS) and all(len(v) == 6 for v in hourly.series.values())
    short = report_of([rec(i, end_ts=T0 + 30 * i) for i in range(100)], until_ts=T0 + 3600)
    assert short.series_step_s == 60 and len(short.series_buckets) == 60
    assert short.series_buckets[1] == "2026-11-23T08:01Z"
    assert short.series["alpha"][0] == 2 * rec(0).cost_usd


def test_series_of_an_unbounded_window_narrows_to_the_records():
    records = many_records(50, span_s=2 * 86400)
    report = report_of(records, since_ts=0.0, until_ts=T0 + 3 * 86400)
    assert 40 <= len(report.series_buckets) <= 49 and report.series_step_s == 3600
    assert sum((v for vs in report.series.values() for v in vs), Decimal(0)) == report.total.cost_usd


# ---- formats ------------------------------------------------------------------------------------

def test_csv_parses_back_to_the_same_numbers():
    report = report_of(many_records(400))
    rows = list(csv.DictReader(io.StringIO(render_csv(report))))
    assert len(rows) == len(report.rows) + 1 and rows[-1]["key"] == "TOTAL"
    assert list(rows[0]) == list(ROW_FIELDS)
    for parsed, row in zip(rows, (*report.rows, report.total)):
        for f in ROW_FIELDS:
            v = getattr(row, f)
            if isinstance(v, Decimal):
                assert Decimal(parsed[f]) == v and "E" not in parsed[f]
            elif isinstance(v, float):
                assert float(parsed[f]) == v
            elif isinstance(v, int):
                assert int(parsed[f]) == v
            else:
                assert parsed[f] == v
    assert sum((Decimal(r["cost_usd"]) for r in rows[:-1]), Decimal(0)) == Decimal(rows[-1]["cost_usd"])


def test_json_round_trips_to_an_equal_report():
    records = many_records(400)
    report = report_of(records, budgets=[warning_status()])
    text = render_json(report)
    d = json.loads(text)
    assert d["total"]["cost_usd"] == format(report.total.cost_usd, "f")
    assert isinstance(d["total"]["billed_device_s"], float)
    assert d["budgets"][0]["level"] == "warning"
    back = report_from_dict(d)
    assert back == report
    assert isinstance(back.total.cost_usd, Decimal) and isinstance(back.budgets[0].budget.limit_usd, Decimal)
    assert render_json(back) == text
    assert report_to_dict(back) == d


def test_table_has_rows_total_and_summary():
    report = report_of(many_records(300), budgets=[warning_status()])
    text = render_table(report)
    for word in ("alpha", "beta", "gamma", "TOTAL", "User view", "Node view", "Platform overhead",
                 "Conservation", "Counterfactuals", "Savings", "Budgets", "[WARNING]"):
        assert word in text
    lines = text.splitlines()
    header = next(l for l in lines if l.startswith("function"))
    total = next(l for l in lines if l.startswith("TOTAL"))
    assert len(header) == len(total)   # aligned columns


class _Checker(HTMLParser):
    """Tags balance (void elements aside) and nothing points outside the file."""
    VOID = {"meta", "br", "line", "rect", "polygon", "img", "input", "link", "hr", "circle", "path"}

    def __init__(self):
        super().__init__()
        self.stack, self.errors, self.svgs, self.legend = [], [], 0, []
        self._in_legend = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag in ("script", "link", "img", "iframe") or any(
                v and ("http://" in v or "https://" in v) and k != "xmlns" for k, v in attrs.items()):
            self.errors.append(f"external or script: <{tag} {attrs}>")
        if tag == "svg":
            self.svgs += 1
        if attrs.get("class") == "legend-item":
            self._in_legend = True
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        pass

    def handle_endtag(self, tag):
        if tag in self.VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:]}")
            return
        self.stack.pop()
        if tag == "g":
            self._in_legend = False

    def handle_data(self, data):
        if self._in_legend and data.strip() and self.stack and self.stack[-1] == "text":
            self.legend.append(data.strip())


def _check(html):
    p = _Checker()
    p.feed(html)
    p.close()
    assert p.errors == [] and p.stack == []
    return p


def test_html_is_self_contained_with_three_charts_and_legends():
    report = report_of(many_records(500), budgets=[warning_status()])
    html = render_html(report)
    p = _check(html)
    assert p.svgs == 3 and html.count("<svg") == 3
    for fn in FNS:
        assert fn in p.legend
    assert "init (cold start, billed)" in p.legend and "no backbone sharing" in p.legend
    assert "<title>" in html and "cost per hour (USD)" in html and "time (UTC" in html
    assert 'class="banner warning"' in html and "daily" in html


def test_html_without_warnings_has_no_banner_and_many_functions_fold_into_other():
    records = [rec(i, fn=f"fn{i % 14:02d}", end_ts=T0 + 60 * i) for i in range(200)]
    html = render_html(report_of(records, budgets=[evaluate(Budget.create("big", "100"), Decimal("0.01"), T0)]))
    p = _check(html)
    assert 'class="banner' not in html
    assert "other (6 functions)" in p.legend and "fn00" in p.legend


@pytest.mark.parametrize("nodes", [[], None])
def test_empty_report_renders_everywhere(nodes):
    report = report_of([], nodes=nodes if nodes is not None else [_node(100.0, 0.0, 100.0)], group_by="hour")
    assert report.total.invocations == 0 and report.total.cost_usd == 0 and report.rows == ()
    assert "no invocations in this window" in render_table(report)
    html = render_html(report)
    assert _check(html).svgs == 3 and "no invocations in this window" in html
    rows = list(csv.DictReader(io.StringIO(render_csv(report))))
    assert [r["key"] for r in rows] == ["TOTAL"]
    assert report_from_dict(json.loads(render_json(report))) == report
    assert report.conservation_error == 0.0


def test_demo_report_writes(tmp_path):
    from slfaas.billing.report_demo import _main
    out = tmp_path / "demo.html"
    assert _main(["--demo", str(out)]) == 0
    html = out.read_text()
    assert _check(html).svgs == 3 and "banner warning" in html


def test_provisioned_time_is_billed_to_its_function_not_platform_overhead() -> None:
    from dataclasses import replace

    from slfaas.billing.prices import device_second_usd

    records = [rec(i, fn=FNS[i % 2]) for i in range(10)]
    plain = node_for(records)
    held = {"alpha": 40.0, "delta": 10.0}    # delta: provisioned, never invoked in the window
    node = replace(plain, overhead_s={**plain.overhead_s, "node_idle": plain.overhead_s["node_idle"] - 50.0},
                   provisioned_by_function_s=held)
    report = report_of(records, [node])
    rows = {r.key: r for r in report.rows}
    rate = device_second_usd(SHEET, "H100", 2048)
    assert rows["alpha"].provisioned_s == 40.0 and rows["delta"].provisioned_s == 10.0
    assert rows["delta"].invocations == 0 and rows["beta"].provisioned_s == 0.0
    assert rows["alpha"].provisioned_cost_usd == (Decimal("40.0") * rate).quantize(Decimal("1e-10"))
    assert report.total.provisioned_cost_usd == rows["alpha"].provisioned_cost_usd + rows["delta"].provisioned_cost_usd
    assert report.billed_cost_usd == report.total.cost_usd + report.total.provisioned_cost_usd
    assert report.platform_overhead_s == pytest.approx(plain.overhead_total_s - 50.0)   # not overhead
    assert report.node_provisioned_s == 50.0 and report.conservation_error < 1e-9
    again = report_from_dict(json.loads(render_json(report)))
    assert again == report
    assert "provisioned 50.000 s" in render_table(report)
    assert "prov_s" in render_table(report).splitlines()[2]
