"""Synthetic usage for a demo report (``python -m slfaas.billing.report_demo --demo OUT.html``, the
screenshot script): six hours of five adapters on one H100 node, deterministic, with cold
starts from the warm pool and from nothing, batches, keep-alive and a budget nearing its limit."""
from __future__ import annotations

import math
import random
from decimal import Decimal
from typing import Sequence

from slfaas.billing.budgets import Budget, evaluate
from slfaas.billing.prices import default_prices, invocation_cost_usd
from slfaas.billing.records import NodeUsage, UsageRecord
from slfaas.billing.report_render import render_csv, render_json, render_table
from slfaas.billing.reports import build_report
from slfaas.billing.report_html import render_html

DEMO_UNTIL_TS = 1795442400.0            # 2026-11-23T14:00Z
DEMO_SINCE_TS = DEMO_UNTIL_TS - 6 * 3600
KEEP_ALIVE_S = 600.0
# function -> (requests per minute at peak, device seconds of a batch of one)
DEMO_FUNCTIONS = {"support-bot": (9.0, 0.55), "sql-coder": (4.0, 0.9), "summarizer": (2.5, 1.6),
                  "legal-qa": (0.8, 1.2), "translator-de": (0.25, 0.7)}


def demo_usage(seed: int = 7) -> tuple[list[UsageRecord], list[NodeUsage]]:
    rng = random.Random(seed)
    sheet = default_prices()
    records: list[UsageRecord] = []
    held: dict[str, float] = {}     # idle instance-seconds per function
    for k, (fn, (peak, base_s)) in enumerate(DEMO_FUNCTIONS.items()):
        ts, last_end, n = DEMO_SINCE_TS, -math.inf, 0
        while True:
            hour = (ts - DEMO_SINCE_TS) / 3600
            rate = peak / 60 * (0.25 + 0.75 * math.sin(math.pi * (hour + k * 0.7) / 7.5) ** 2)
            ts += rng.expovariate(rate)
            if ts >= DEMO_UNTIL_TS - 5:
                break
            n += 1
            gap = ts - last_end
            cold = gap > KEEP_ALIVE_S
            held[fn] = held.get(fn, 0.0) + min(max(gap, 0.0), KEEP_ALIVE_S)
            tier = "warm" if not cold else ("pool" if rng.random() < 0.75 else "cold")
            init_s = {"warm": 0.0, "pool": rng.uniform(0.6, 1.1), "cold": rng.uniform(5.5, 8.0)}[tier]
            batch = 1 if cold else rng.choice((1, 1, 2, 2, 3, 4))
            batch_s = base_s * (1 + 0.35 * (batch - 1)) * rng.uniform(0.8, 1.25)
            compute_s = batch_s / batch
            end = ts + rng.uniform(0.01, 0.2) + init_s + batch_s
            billed = compute_s + init_s
            memory_mb = 2048
            records.append(UsageRecord(
                request_id=f"{fn}-{n:05d}", function_name=fn, version="2" if n % 5 else "1",
                node_id="node-a", device="cuda:0", device_type="H100", start_ts=ts, end_ts=end,
                status="success" if rng.random() > 0.01 else "function_error", cold_start=cold,
                preload_tier=tier, batch_size=batch, batch_device_s=batch_s, compute_device_s=compute_s,
                init_device_s=init_s, runtime_overhead_s=rng.uniform(0.005, 0.03), queue_s=rng.uniform(0, 0.2),
                tokens_in=rng.randint(40, 600), tokens_out=rng.randint(20, 300), memory_mb=memory_mb,
                cost_usd=invocation_cost_usd(sheet, "H100", memory_mb, billed),
                init_phases_s={"adapter_load": init_s} if cold else {}))
            last_end = end
    records = [r for r in records if r.end_ts < DEMO_UNTIL_TS]
    elapsed = DEMO_UNTIL_TS - DEMO_SINCE_TS
    billed = math.fsum(r.billed_device_s for r in records)
    runtime = math.fsum(r.runtime_overhead_s for r in records)
    # held instances overlap: the timeline shares keep-alive time among them (30 % of the idle time)
    idle = elapsed - billed - runtime
    keep_alive = {fn: 0.3 * idle * s / math.fsum(held.values()) for fn, s in sorted(held.items())}
    ka = math.fsum(keep_alive.values())
    rest = idle - ka
    overhead = {"runtime": runtime, "keep_alive": ka, "preload": rest * 0.22,
                "idle_backbone": rest * 0.48, "node_idle": 0.0}
    overhead["node_idle"] = elapsed - billed - math.fsum(overhead.values())
    node = NodeUsage("node-a", "cuda:0", "H100", DEMO_SINCE_TS, DEMO_UNTIL_TS, elapsed, billed, overhead,
                     keep_alive, backbone_bytes=16_000_000_000, backbone_load_s=9.5)
    return records, [node]


def demo_report(seed: int = 7, group_by: str = "function"):

    records, nodes = demo_usage(seed)
    day_start = math.floor(DEMO_UNTIL_TS / 86400) * 86400
    spent_today = sum((r.cost_usd for r in records if r.end_ts >= day_start), Decimal(0))
    # a daily limit the day's projection reaches 90 % of: the banner shows a warning
    projected = spent_today * Decimal(86400) / Decimal(DEMO_UNTIL_TS - day_start)
    limit = (projected / Decimal("0.9")).quantize(Decimal("0.01"))
    budgets = [evaluate(Budget.create("daily-all", limit, "day"), spent_today, DEMO_UNTIL_TS),
               evaluate(Budget.create("legal-qa-month", "25", "month", hard=True, function_name="legal-qa"),
                        sum((r.cost_usd for r in records if r.function_name == "legal-qa"), Decimal(0)),
                        DEMO_UNTIL_TS)]
    return build_report(records, nodes, default_prices(), since_ts=DEMO_SINCE_TS, until_ts=DEMO_UNTIL_TS,
                        group_by=group_by, budgets=budgets)


def _main(argv: "Sequence[str] | None" = None) -> int:
    import argparse
    from pathlib import Path

    p = argparse.ArgumentParser(prog="python -m slfaas.billing.report_demo",
                                description="Write a cost report of synthetic usage (a demo of the renderers).")
    p.add_argument("--demo", metavar="OUT", required=True, help="file to write")
    p.add_argument("--format", choices=("table", "csv", "json", "html"), default=None,
                   help="default: from OUT's suffix, else html")
    args = p.parse_args(argv)
    report = demo_report()
    out = Path(args.demo)
    fmt = args.format or {".csv": "csv", ".json": "json", ".txt": "table"}.get(out.suffix, "html")
    render = {"table": render_table, "csv": render_csv, "json": render_json, "html": render_html}[fmt]
    out.write_text(render(report), encoding="utf-8")
    print(f"wrote {out} ({fmt})")
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
