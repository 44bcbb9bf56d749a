"""Cost reports (IO-free): the same usage records seen as what users are billed and what the
nodes spent, with the gap between them as platform overhead, next to counterfactual policies.

Money stays ``Decimal`` from the stored per-invocation costs to the report total, so the total
is the exact sum of the rows and of the records ("to the cent", and to the stored $1e-10).
Seconds are floats summed with ``math.fsum``. Records count in the window by their end time,
as they were billed when they ended.

Two views of one window:
- user view: Σ billed device seconds and stored costs of the (filtered) invocations;
- node view: the ``NodeUsage`` sessions as given (the caller picks the ones of the window),
  priced at each node's device rate; what the nodes spent beyond billed work (keep-alive,
  pre-loading, idle backbone, runtime overhead) is the platform overhead. Instances held for
  provisioned concurrency are billed to their function (``provisioned_s``, priced at the node's
  rate), not overhead. Conservation checks billed (all records of the window on those nodes) +
  provisioned + overhead against the nodes' elapsed time.

Renderers: ``render_table`` / ``render_csv`` / ``render_json`` in ``report_render``,
``render_html`` in ``report_html`` (inline SVG, no scripts, viewable offline).
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import ROUND_HALF_EVEN, Context, Decimal, localcontext
from typing import Iterable, Mapping, Sequence

from slfaas.billing import counterfactuals as cf
from slfaas.billing.budgets import BudgetStatus
from slfaas.billing.counterfactuals import Counterfactual
from slfaas.billing.prices import COST_QUANTUM, PriceSheet, device_second_usd
from slfaas.billing.records import NodeUsage, UsageRecord
from slfaas.errors import InvalidParameter

GROUP_BYS = ("function", "version", "hour", "day")
DEFAULT_MEMORY_MB = 2048            # prices a node's time when no record says otherwise
MINUTE_SERIES_BELOW_S = 3 * 3600    # windows shorter than this are plotted per minute
MAX_SERIES_BUCKETS = 1000
MONEY_CONTEXT = _CTX = Context(prec=50, rounding=ROUND_HALF_EVEN)
_ZERO = Decimal(0)


@dataclass(frozen=True)
class ReportRow:
    key: str                    # function, "fn:version", "2026-11-23T14:00Z", "2026-11-23", "TOTAL"
    invocations: int
    cold_starts: int
    errors: int
    tokens_in: int
    tokens_out: int
    compute_device_s: float
    init_device_s: float
    billed_device_s: float
    keep_alive_s: float         # node-side keep-alive of the function (group-by function only)
    cost_usd: Decimal           # Σ stored record costs, exact
    compute_cost_usd: Decimal   # request fees + compute's share of device cost
    init_cost_usd: Decimal      # init's share; compute + init == cost exactly
    provisioned_s: float = 0.0  # device time held for its provisioned concurrency (group-by function only)
    provisioned_cost_usd: Decimal = Decimal(0)   # billed beside the invocations' cost_usd


@dataclass(frozen=True)
class FunctionSplit:
    """One function's cost as init / compute / idle for the split chart. Idle is not billed to
    anyone: the function's keep-alive plus its share (by billed device seconds on each node) of
    the node's other overhead, priced at the node's rate."""
    function_name: str
    compute_cost_usd: Decimal
    init_cost_usd: Decimal
    idle_s: float
    idle_cost_usd: Decimal


@dataclass(frozen=True)
class Report:
    since_ts: float
    until_ts: float
    group_by: str
    function_name: str | None
    currency: str
    rows: tuple[ReportRow, ...]
    total: ReportRow
    # node view (all functions on the nodes given)
    node_ids: tuple[str, ...]
    node_elapsed_s: float
    node_billed_device_s: float         # what the nodes' meters billed
    records_billed_device_s: float      # Σ billed of the window's records on those nodes
    overhead_by_kind_s: Mapping[str, float]
    node_cost_usd: Decimal
    platform_overhead_s: float
    platform_overhead_usd: Decimal
    conservation_error: float           # |records billed + provisioned + overhead − elapsed| / elapsed
    # what the same invocations would have cost
    counterfactuals: tuple[Counterfactual, ...]       # actual, no_sharing, serverful
    savings: Mapping[str, tuple[Decimal, float]]       # name → ($ saved, fraction saved)
    batching_saved_device_s: float
    preload_saved_s: float
    budgets: tuple[BudgetStatus, ...]
    function_splits: tuple[FunctionSplit, ...]
    # cost per function per time bucket (end time), for the plot
    series_step_s: int
    series_buckets: tuple[str, ...]
    series: Mapping[str, tuple[Decimal, ...]]
    node_provisioned_s: float = 0.0     # what the nodes held for provisioned concurrency (billed)

    # user view: what the invocations were billed
    @property
    def billed_device_s(self) -> float:
        return self.total.billed_device_s

    @property
    def billed_cost_usd(self) -> Decimal:
        """Invocations plus provisioned concurrency."""
        return self.total.cost_usd + self.total.provisioned_cost_usd

    @property
    def node_gap_usd(self) -> Decimal:
        """What the nodes cost beyond what users were billed."""
        return self.node_cost_usd - self.billed_cost_usd

    @property
    def billed_mismatch(self) -> float:
        """Relative disagreement of the records' billed seconds and the nodes' meters."""
        ref = max(abs(self.node_billed_device_s), abs(self.records_billed_device_s))
        return 0.0 if ref == 0 else abs(self.records_billed_device_s - self.node_billed_device_s) / ref


# ---- building ----------------------------------------------------------------------------------

def _iso(ts: float, step_s: int) -> str:
    d = datetime.fromtimestamp(ts, tz=timezone.utc)
    if step_s >= 86400:
        return d.strftime("%Y-%m-%d")
    if step_s >= 3600:
        return d.strftime("%Y-%m-%dT%H:00Z")
    return d.strftime("%Y-%m-%dT%H:%MZ")


def _bucket_start(ts: float, step_s: int) -> float:
    return math.floor(ts / step_s) * step_s


def _group_key(rec: UsageRecord, group_by: str) -> str:
    if group_by == "function":
        return rec.function_name
    if group_by == "version":
        return f"{rec.function_name}:{rec.version}"
    return _iso(rec.end_ts, 3600 if group_by == "hour" else 86400)


def split_cost(rec: UsageRecord, request_usd: Decimal) -> tuple[Decimal, Decimal]:
    """(compute, init) parts of a record's stored cost: the device part shared in proportion to
    device seconds, the request fee with compute; init is quantized and compute takes the rest,
    so the parts add up to the stored cost exactly."""
    cost = rec.cost_usd
    billed_s = rec.billed_device_s
    if billed_s <= 0 or rec.init_device_s <= 0 or cost <= 0:
        return cost, _ZERO
    with localcontext(_CTX):
        device_part = cost - min(request_usd, cost)
        init = (device_part * Decimal(repr(float(rec.init_device_s))) / Decimal(repr(float(billed_s))))
        init = min(max(init.quantize(COST_QUANTUM), _ZERO), device_part)
        return cost - init, init


def _row(key: str, recs: Sequence[UsageRecord], request_usd: Decimal, keep_alive_s: float = 0.0,
         provisioned: tuple[float, Decimal] = (0.0, _ZERO)) -> ReportRow:
    compute_usd = init_usd = _ZERO
    for r in recs:
        c, i = split_cost(r, request_usd)
        compute_usd += c
        init_usd += i
    return ReportRow(
        key=key, invocations=len(recs), cold_starts=sum(1 for r in recs if r.cold_start),
        errors=sum(1 for r in recs if r.status != "success"),
        tokens_in=sum(r.tokens_in for r in recs), tokens_out=sum(r.tokens_out for r in recs),
        compute_device_s=math.fsum(r.compute_device_s for r in recs),
        init_device_s=math.fsum(r.init_device_s for r in recs),
        billed_device_s=math.fsum(r.billed_device_s for r in recs),
        keep_alive_s=keep_alive_s, cost_usd=sum((r.cost_usd for r in recs), _ZERO),
        compute_cost_usd=compute_usd, init_cost_usd=init_usd, provisioned_s=provisioned[0],
        provisioned_cost_usd=provisioned[1])


def _total(rows: Sequence[ReportRow], recs: Sequence[UsageRecord], request_usd: Decimal) -> ReportRow:
    # Per-record splits make the rows additive: the TOTAL split is the rows' split.
    return _row("TOTAL", recs, request_usd, math.fsum(r.keep_alive_s for r in rows),
                (math.fsum(r.provisioned_s for r in rows), sum((r.provisioned_cost_usd for r in rows), _ZERO)))


def _median_memory_mb(recs: Iterable[UsageRecord]) -> int:
    mems = [r.memory_mb for r in recs if r.memory_mb > 0]
    return int(statistics.median_low(mems)) if mems else DEFAULT_MEMORY_MB


def _price_s(seconds: float, rate: Decimal) -> Decimal:
    with localcontext(_CTX):
        return (Decimal(repr(float(seconds))) * rate).quantize(COST_QUANTUM)


def _series(recs: Sequence[UsageRecord], since_ts: float, until_ts: float
            ) -> tuple[int, tuple[str, ...], dict[str, tuple[Decimal, ...]]]:
    """Cost per function per bucket of end time: per minute for windows under 3 h, else per
    hour. A window of more than MAX_SERIES_BUCKETS hours (``--since`` the epoch) is first
    narrowed to the records' span, which is plotted per day (or coarser) if still that long."""
    def step_for(span_s: float) -> int:
        step = 60 if span_s < MINUTE_SERIES_BELOW_S else 3600
        if span_s / step > MAX_SERIES_BUCKETS:
            step = 86400 * max(1, math.ceil(span_s / 86400 / MAX_SERIES_BUCKETS))
        return step

    lo, hi = since_ts, until_ts
    if not math.isfinite(hi - lo) or step_for(hi - lo) >= 86400:
        if not recs:
            return 3600, (), {}
        ends = [r.end_ts for r in recs]
        lo, hi = min(ends), max(ends) + 1e-6
    step = step_for(hi - lo)
    first = _bucket_start(lo, step)
    n = max(1, math.ceil((hi - first) / step))
    buckets = tuple(_iso(first + i * step, step) for i in range(n))
    sums: dict[str, list[Decimal]] = {}
    for r in recs:
        i = min(n - 1, max(0, int((r.end_ts - first) // step)))
        sums.setdefault(r.function_name, [_ZERO] * n)[i] += r.cost_usd
    return step, buckets, {fn: tuple(v) for fn, v in sorted(sums.items())}


def build_report(records: Sequence[UsageRecord], nodes: Sequence[NodeUsage], sheet: PriceSheet, *,
                 since_ts: float, until_ts: float, group_by: str = "function",
                 function_name: str | None = None, budgets: Sequence[BudgetStatus] = ()) -> Report:
    """The report of the records ending in [since_ts, until_ts) (of ``function_name`` when
    given). ``nodes`` are used as given (their whole sessions): the node view, overhead and
    conservation cover every function on them, whatever ``function_name`` says."""
    if group_by not in GROUP_BYS:
        raise InvalidParameter(f"group by must be one of {', '.join(GROUP_BYS)}, got {group_by!r}")
    if not until_ts >= since_ts:
        raise InvalidParameter(f"window end {until_ts} is before its start {since_ts}")
    window = sorted((r for r in records if since_ts <= r.end_ts < until_ts),
                    key=lambda r: (r.end_ts, r.request_id))
    recs = [r for r in window if function_name is None or r.function_name == function_name]
    fee = sheet.request_usd

    node_ids = {n.node_id for n in nodes}
    on_nodes = [r for r in window if r.node_id in node_ids]
    rates = {}
    for n in nodes:  # a node's time is priced at its records' median memory (matters on CPU)
        mine = [r for r in on_nodes if r.node_id == n.node_id]
        rates[n.node_id] = device_second_usd(sheet, n.device_type, _median_memory_mb(mine or window))
    keep_alive_fn: dict[str, float] = {}
    provisioned_fn: dict[str, tuple[float, Decimal]] = {}
    for n in nodes:
        for fn, s in n.keep_alive_by_function_s.items():
            keep_alive_fn[fn] = keep_alive_fn.get(fn, 0.0) + s
        for fn, s in n.provisioned_by_function_s.items():
            held_s, usd_ = provisioned_fn.get(fn, (0.0, _ZERO))
            provisioned_fn[fn] = (held_s + s, usd_ + _price_s(s, rates[n.node_id]))
    groups: dict[str, list[UsageRecord]] = {}
    for r in recs:
        groups.setdefault(_group_key(r, group_by), []).append(r)
    if group_by == "function":  # functions that only held instances cost the platform (or themselves) too
        for fn, s in [*keep_alive_fn.items(), *((f, p[0]) for f, p in provisioned_fn.items())]:
            if s > 0 and (function_name is None or fn == function_name):
                groups.setdefault(fn, [])
    by_fn = group_by == "function"
    rows = tuple(_row(k, groups[k], fee, keep_alive_fn.get(k, 0.0) if by_fn else 0.0,
                      provisioned_fn.get(k, (0.0, _ZERO)) if by_fn else (0.0, _ZERO)) for k in sorted(groups))
    total = _total(rows, recs, fee)

    # node view
    elapsed_s = math.fsum(n.elapsed_s for n in nodes)
    overhead: dict[str, float] = {}
    for n in nodes:
        for kind, s in n.overhead_s.items():
            overhead[kind] = overhead.get(kind, 0.0) + s
    overhead_s = math.fsum(overhead.values())
    overhead_usd = sum((_price_s(n.overhead_total_s, rates[n.node_id]) for n in nodes), _ZERO)
    node_cost = sum((_price_s(n.elapsed_s, rates[n.node_id]) for n in nodes), _ZERO) + fee * len(on_nodes)
    records_billed = math.fsum(r.billed_device_s for r in on_nodes)
    provisioned_s = math.fsum(n.provisioned_s for n in nodes)
    conservation = (0.0 if elapsed_s == 0 else
                    abs(records_billed + provisioned_s + overhead_s - elapsed_s) / elapsed_s)

    # counterfactuals over the (filtered) invocations
    actual = cf.actual(recs)
    others = (cf.no_sharing(recs, nodes, sheet), cf.serverful(recs, since_ts, until_ts, sheet))
    savings = {o.name: cf.savings(actual, o) for o in others}

    splits = _function_splits(recs, on_nodes, nodes, rates, fee, function_name)
    step, buckets, series = _series(recs, since_ts, until_ts)
    return Report(
        since_ts=since_ts, until_ts=until_ts, group_by=group_by, function_name=function_name,
        currency=sheet.currency, rows=rows, total=total, node_ids=tuple(sorted(node_ids)),
        node_elapsed_s=elapsed_s, node_billed_device_s=math.fsum(n.billed_device_s for n in nodes),
        records_billed_device_s=records_billed, overhead_by_kind_s=dict(sorted(overhead.items())),
        node_cost_usd=node_cost, platform_overhead_s=overhead_s, platform_overhead_usd=overhead_usd,
        conservation_error=conservation, counterfactuals=(actual, *others), savings=savings,
        batching_saved_device_s=cf.batching_saved_device_s(recs), preload_saved_s=cf.preload_saved_s(recs),
        budgets=tuple(budgets), function_splits=splits,
        series_step_s=step, series_buckets=buckets, series=series, node_provisioned_s=provisioned_s)


def _function_splits(recs: Sequence[UsageRecord], on_nodes: Sequence[UsageRecord], nodes: Sequence[NodeUsage],
                     rates: Mapping[str, Decimal], fee: Decimal, function_name: str | None
                     ) -> tuple[FunctionSplit, ...]:
    idle_s: dict[str, float] = {}
    idle_usd: dict[str, Decimal] = {}
    for n in nodes:
        billed: dict[str, float] = {}
        for r in on_nodes:
            if r.node_id == n.node_id:
                billed[r.function_name] = billed.get(r.function_name, 0.0) + r.billed_device_s
        total_billed = math.fsum(billed.values())
        other_s = max(0.0, n.overhead_total_s - math.fsum(n.keep_alive_by_function_s.values()))
        for fn in set(billed) | set(n.keep_alive_by_function_s):
            s = n.keep_alive_by_function_s.get(fn, 0.0)
            if total_billed > 0:
                s += other_s * billed.get(fn, 0.0) / total_billed
            idle_s[fn] = idle_s.get(fn, 0.0) + s
            idle_usd[fn] = idle_usd.get(fn, _ZERO) + _price_s(s, rates[n.node_id])
    by_fn: dict[str, list[UsageRecord]] = {}
    for r in recs:
        by_fn.setdefault(r.function_name, []).append(r)
    out = []
    for fn in sorted(set(by_fn) | {f for f, s in idle_s.items() if s > 0}):
        if function_name is not None and fn != function_name:
            continue
        row = _row(fn, by_fn.get(fn, []), fee)
        out.append(FunctionSplit(fn, row.compute_cost_usd, row.init_cost_usd,
                                 idle_s.get(fn, 0.0), idle_usd.get(fn, _ZERO)))
    return tuple(out)
