"""The same usage priced under other policies (IO-free), so a report can say what sharing,
pre-loading and batching saved against what a user would otherwise have paid.

Each counterfactual re-prices the recorded invocations with ``invocation_cost_usd`` per record
and sums the quantized costs, exactly as the actual costs were stored, so differences between
policies are not rounding artefacts.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from decimal import Decimal
from typing import Iterable, Sequence

from slfaas.billing.prices import PriceSheet, invocation_cost_usd
from slfaas.billing.records import NodeUsage, UsageRecord
from slfaas.errors import InvalidParameter


@dataclass(frozen=True)
class Counterfactual:
    name: str               # "actual" | "no_sharing" | "serverful"
    cost_usd: Decimal
    device_s: float         # device seconds paid for
    explanation: str        # one line: what was assumed


def actual(records: Iterable[UsageRecord]) -> Counterfactual:
    """What was charged: the stored costs (already quantized) and billed device seconds."""
    records = list(records)
    cost = sum((r.cost_usd for r in records), Decimal(0))
    device_s = math.fsum(r.billed_device_s for r in records)
    return Counterfactual("actual", cost, device_s,
                          f"{len(records)} invocations as billed (shared backbones, pre-loading, batching)")


def no_sharing(records: Iterable[UsageRecord], nodes: Sequence[NodeUsage],
               sheet: PriceSheet) -> Counterfactual:
    """Every instance loads and holds its own backbone: each cold start also pays its node's
    measured backbone load time, on top of what the invocation was billed."""
    load_s_by_node = {n.node_id: n.backbone_load_s for n in nodes}
    cost = Decimal(0)
    device_s: list[float] = []
    cold = 0
    unknown_nodes: set[str] = set()
    added_s: list[float] = []
    n = 0
    for rec in records:
        n += 1
        extra_s = 0.0
        if rec.cold_start:
            cold += 1
            if rec.node_id in load_s_by_node:
                extra_s = load_s_by_node[rec.node_id]
            else:
                unknown_nodes.add(rec.node_id)
        added_s.append(extra_s)
        billed_s = rec.billed_device_s + extra_s
        device_s.append(billed_s)
        cost += invocation_cost_usd(sheet, rec.device_type, rec.memory_mb, billed_s)
    text = (f"{n} invocations, {cold} cold starts each loading a private backbone "
            f"(+{math.fsum(added_s):.3f} device-s)")
    if unknown_nodes:
        text += f"; backbone load time unknown for node(s) {', '.join(sorted(unknown_nodes))}, counted as 0 s"
    return Counterfactual("no_sharing", cost, math.fsum(device_s), text)


def serverful(records: Iterable[UsageRecord], since_ts: float, until_ts: float,
              sheet: PriceSheet) -> Counterfactual:
    """An always-on deployment: one dedicated device per function invoked in the window
    (``records`` are the window's), paid for the whole window at that function's device rate
    (device type and memory of its latest record), with no request fees."""
    window_s = until_ts - since_ts
    if not math.isfinite(window_s) or window_s < 0:
        raise InvalidParameter(f"window end {until_ts} is before its start {since_ts}")
    latest: dict[str, UsageRecord] = {}
    for rec in records:
        prev = latest.get(rec.function_name)
        if prev is None or (rec.end_ts, rec.start_ts) >= (prev.end_ts, prev.start_ts):
            latest[rec.function_name] = rec
    cost = sum((invocation_cost_usd(sheet, r.device_type, r.memory_mb, window_s, requests=0)
                for r in latest.values()), Decimal(0))
    return Counterfactual("serverful", cost, window_s * len(latest),
                          f"{len(latest)} functions, each on a dedicated always-on device "
                          f"for the whole window ({window_s:.0f} s)")


def savings(actual: Counterfactual, other: Counterfactual) -> tuple[Decimal, float]:
    """($ saved against ``other``, fraction of ``other`` saved); the fraction is negative when
    the actual cost is higher, and 0.0 when ``other`` cost nothing."""
    saved_usd = other.cost_usd - actual.cost_usd
    if other.cost_usd == 0:
        return saved_usd, 0.0
    return saved_usd, float(1 - actual.cost_usd / other.cost_usd)


def batching_saved_device_s(records: Iterable[UsageRecord]) -> float:
    """Device seconds batching saved: each request alone would have taken about its batch's
    (scaled) time, and was billed 1/k of it, so k−1 shares were saved (0 when every batch has
    one request; a request billed less than its device time because it overlapped other work
    saved nothing by batching)."""
    return math.fsum(r.compute_device_s * (r.batch_size - 1) for r in records)


def preload_saved_s(records: Iterable[UsageRecord]) -> float:
    """Init seconds pre-loading saved: each cold start from the warm pool or a pre-warmed runtime
    against the median init of cold-tier cold starts (per start, never below 0); 0 without
    cold-tier samples to compare."""
    records = list(records)
    cold_init_s = [r.init_device_s for r in records if r.cold_start and r.preload_tier == "cold"]
    if not cold_init_s:
        return 0.0
    median_s = statistics.median(cold_init_s)
    return math.fsum(max(0.0, median_s - r.init_device_s)
                     for r in records if r.cold_start and r.preload_tier in ("pool", "prewarmed"))
