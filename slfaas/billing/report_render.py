"""A ``Report`` as text: JSON (and back), CSV, an aligned table and the summary lines the
table and the HTML share. Money stays exact (Decimal strings), seconds parse back exactly."""
from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import fields
from datetime import datetime, timezone
from decimal import Decimal, localcontext
from typing import Any, Callable, Mapping, Sequence

from slfaas.billing.budgets import Budget, BudgetStatus
from slfaas.billing.counterfactuals import Counterfactual
from slfaas.billing.reports import MONEY_CONTEXT as _CTX
from slfaas.billing.reports import FunctionSplit, Report, ReportRow


# ---- dict / JSON -------------------------------------------------------------------------------

def _usd_str(d: Decimal) -> str:
    return format(d, "f")


def _row_to_dict(row: Any) -> dict:
    return {f.name: _usd_str(v) if isinstance(v := getattr(row, f.name), Decimal) else v for f in fields(row)}


def _row_from_dict(cls: type, d: Mapping[str, Any]) -> Any:
    return cls(**{f.name: Decimal(d[f.name]) if f.name.endswith("_usd") else d[f.name] for f in fields(cls)})


def _budget_to_dict(s: BudgetStatus) -> dict:
    d = _row_to_dict(s)
    d["budget"] = _row_to_dict(s.budget)
    return d


def _budget_from_dict(d: Mapping[str, Any]) -> BudgetStatus:
    return BudgetStatus(**{**{f.name: d[f.name] for f in fields(BudgetStatus)},
                           "budget": _row_from_dict(Budget, d["budget"]),
                           "spent_usd": Decimal(d["spent_usd"]), "projected_usd": Decimal(d["projected_usd"])})


def report_to_dict(report: Report) -> dict:
    """Everything in the report, JSON-ready: every ``*_usd`` value a Decimal string, seconds
    and fractions floats (json writes their repr, so they parse back exactly)."""
    return {
        "since_ts": report.since_ts, "until_ts": report.until_ts,
        "since": datetime.fromtimestamp(report.since_ts, tz=timezone.utc).isoformat()
        if math.isfinite(report.since_ts) else None,
        "until": datetime.fromtimestamp(report.until_ts, tz=timezone.utc).isoformat()
        if math.isfinite(report.until_ts) else None,
        "group_by": report.group_by, "function_name": report.function_name, "currency": report.currency,
        "rows": [_row_to_dict(r) for r in report.rows],
        "total": _row_to_dict(report.total),
        "user_view": {"invocations": report.total.invocations, "billed_device_s": report.billed_device_s,
                      "billed_cost_usd": _usd_str(report.billed_cost_usd)},
        "node_view": {"node_ids": list(report.node_ids), "node_elapsed_s": report.node_elapsed_s,
                      "node_billed_device_s": report.node_billed_device_s,
                      "provisioned_s": report.node_provisioned_s,
                      "records_billed_device_s": report.records_billed_device_s,
                      "billed_mismatch": report.billed_mismatch,
                      "overhead_by_kind_s": dict(report.overhead_by_kind_s),
                      "node_cost_usd": _usd_str(report.node_cost_usd),
                      "gap_usd": _usd_str(report.node_gap_usd)},
        "platform_overhead_s": report.platform_overhead_s,
        "platform_overhead_usd": _usd_str(report.platform_overhead_usd),
        "conservation_error": report.conservation_error,
        "counterfactuals": [_row_to_dict(c) for c in report.counterfactuals],
        "savings": {k: {"saved_usd": _usd_str(usd), "fraction": frac} for k, (usd, frac) in report.savings.items()},
        "batching_saved_device_s": report.batching_saved_device_s,
        "preload_saved_s": report.preload_saved_s,
        "budgets": [_budget_to_dict(b) for b in report.budgets],
        "function_splits": [_row_to_dict(s) for s in report.function_splits],
        "series": {"step_s": report.series_step_s, "buckets": list(report.series_buckets),
                   "cost_usd": {fn: [_usd_str(v) for v in vs] for fn, vs in report.series.items()}},
    }


def report_from_dict(d: Mapping[str, Any]) -> Report:
    node = d["node_view"]
    return Report(
        since_ts=d["since_ts"], until_ts=d["until_ts"], group_by=d["group_by"],
        function_name=d["function_name"], currency=d["currency"],
        rows=tuple(_row_from_dict(ReportRow, r) for r in d["rows"]),
        total=_row_from_dict(ReportRow, d["total"]), node_ids=tuple(node["node_ids"]),
        node_elapsed_s=node["node_elapsed_s"], node_billed_device_s=node["node_billed_device_s"],
        records_billed_device_s=node["records_billed_device_s"],
        overhead_by_kind_s=dict(node["overhead_by_kind_s"]), node_cost_usd=Decimal(node["node_cost_usd"]),
        platform_overhead_s=d["platform_overhead_s"], platform_overhead_usd=Decimal(d["platform_overhead_usd"]),
        conservation_error=d["conservation_error"],
        counterfactuals=tuple(_row_from_dict(Counterfactual, c) for c in d["counterfactuals"]),
        savings={k: (Decimal(v["saved_usd"]), v["fraction"]) for k, v in d["savings"].items()},
        batching_saved_device_s=d["batching_saved_device_s"], preload_saved_s=d["preload_saved_s"],
        budgets=tuple(_budget_from_dict(b) for b in d["budgets"]),
        function_splits=tuple(_row_from_dict(FunctionSplit, s) for s in d["function_splits"]),
        series_step_s=d["series"]["step_s"], series_buckets=tuple(d["series"]["buckets"]),
        series={fn: tuple(Decimal(v) for v in vs) for fn, vs in d["series"]["cost_usd"].items()},
        node_provisioned_s=node.get("provisioned_s", 0.0))


def render_json(report: Report) -> str:
    return json.dumps(report_to_dict(report), indent=2) + "\n"


# ---- CSV / table ------------------------------------------------------------------------------

ROW_FIELDS = tuple(f.name for f in fields(ReportRow))


def render_csv(report: Report) -> str:
    """Header, one line per row, TOTAL. Costs as plain Decimal strings, seconds as float repr:
    ``Decimal(cell)`` / ``float(cell)`` give back the report's numbers exactly."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(ROW_FIELDS)
    for row in (*report.rows, report.total):
        w.writerow([_usd_str(v) if isinstance(v, Decimal) else repr(v) if isinstance(v, float) else v
                    for v in (getattr(row, f) for f in ROW_FIELDS)])
    return buf.getvalue()


def usd(value: Decimal, places: int = 6) -> str:
    with localcontext(_CTX):
        return f"${value.quantize(Decimal(1).scaleb(-places)):,.{places}f}"


def pct(fraction: float) -> str:
    return f"{fraction * 100:.1f}%"


TABLE_COLUMNS: tuple[tuple[str, str, Callable[[ReportRow], str]], ...] = (
    ("invocations", "invoc", lambda r: str(r.invocations)),
    ("cold_starts", "cold", lambda r: str(r.cold_starts)),
    ("errors", "err", lambda r: str(r.errors)),
    ("tokens_in", "tok_in", lambda r: str(r.tokens_in)),
    ("tokens_out", "tok_out", lambda r: str(r.tokens_out)),
    ("compute_device_s", "compute_s", lambda r: f"{r.compute_device_s:.3f}"),
    ("init_device_s", "init_s", lambda r: f"{r.init_device_s:.3f}"),
    ("keep_alive_s", "keepalive_s", lambda r: f"{r.keep_alive_s:.3f}"),
    ("provisioned_s", "prov_s", lambda r: f"{r.provisioned_s:.3f}"),
    ("compute_cost_usd", "compute", lambda r: usd(r.compute_cost_usd)),
    ("init_cost_usd", "init", lambda r: usd(r.init_cost_usd)),
    ("cost_usd", "cost", lambda r: usd(r.cost_usd)),
)


def summary_lines(report: Report) -> list[tuple[str, str]]:
    """(label, text) lines shared by the table and the HTML summary."""
    t = report.total
    overhead = ", ".join(f"{k} {v:.3f} s" for k, v in report.overhead_by_kind_s.items() if v) or "none"
    share = report.platform_overhead_s / report.node_elapsed_s if report.node_elapsed_s else 0.0
    scope = f" (all functions on {len(report.node_ids)} node(s))" if report.function_name else ""
    lines = [
        ("User view", f"{t.invocations} invocations billed {t.billed_device_s:.3f} device-s, "
                      f"{usd(report.billed_cost_usd)} "
                      f"(init {usd(t.init_cost_usd)}, compute {usd(t.compute_cost_usd)}"
                      + (f", provisioned {t.provisioned_s:.3f} s {usd(t.provisioned_cost_usd)})"
                         if t.provisioned_s else ")")),
        ("Node view", f"{len(report.node_ids)} node(s) metered {report.node_elapsed_s:.3f} device-s, "
                      f"{usd(report.node_cost_usd)}{scope}"),
        ("Platform overhead", f"{report.platform_overhead_s:.3f} device-s ({pct(share)} of node time), "
                              f"{usd(report.platform_overhead_usd)}: {overhead}"),
        ("Conservation", f"billed {report.records_billed_device_s:.3f} s + provisioned "
                         f"{report.node_provisioned_s:.3f} s + overhead "
                         f"{report.platform_overhead_s:.3f} s vs node {report.node_elapsed_s:.3f} s: "
                         f"error {report.conservation_error * 100:.3f}%"
                         + (f" (records vs node meters differ by {pct(report.billed_mismatch)})"
                            if report.billed_mismatch > 0.001 else "")),
        ("Counterfactuals", " | ".join(f"{c.name} {usd(c.cost_usd)}" for c in report.counterfactuals)),
        ("Savings", "; ".join([*(f"vs {k} {usd(v)} ({pct(f)})" for k, (v, f) in report.savings.items()),
                               f"batching saved {report.batching_saved_device_s:.3f} device-s",
                               f"pre-loading saved {report.preload_saved_s:.3f} s of init"])),
    ]
    if report.budgets:
        lines += [("Budgets", f"[{b.level.upper()}] {b.message}") for b in report.budgets]
    else:
        lines.append(("Budgets", "none set"))
    return lines


def _fmt_ts(ts: float) -> str:
    if not math.isfinite(ts):
        return str(ts)
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def render_table(report: Report) -> str:
    """Aligned plain text for a terminal. Costs with 6 decimals; TOTAL is the exact sum, so
    its cents are exact (rounded half-even from the exact total)."""
    head = [report.group_by, *(c[1] for c in TABLE_COLUMNS)]
    body = [[r.key, *(c[2](r) for c in TABLE_COLUMNS)] for r in report.rows]
    total = [report.total.key, *(c[2](report.total) for c in TABLE_COLUMNS)]
    widths = [max(len(x[i]) for x in (head, *body, total)) for i in range(len(head))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    scope = f", function {report.function_name}" if report.function_name else ""
    out = [f"Cost report {_fmt_ts(report.since_ts)} .. {_fmt_ts(report.until_ts)} "
           f"(group by {report.group_by}{scope}; {report.currency})", "", line(head),
           line(["-" * w for w in widths])]
    out += [line(b) for b in body] or ["(no invocations in this window)"]
    out += [line(["-" * w for w in widths]), line(total), ""]
    pad = max(len(k) for k, _ in summary_lines(report))
    out += [f"{k.ljust(pad)}  {v}" for k, v in summary_lines(report)]
    return "\n".join(out) + "\n"
