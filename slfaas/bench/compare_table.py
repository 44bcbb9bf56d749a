"""The comparison's table: one row per policy (latency, SLO attainment, throughput, cold starts
by source, device-seconds, both costs), as values, as Markdown, and savings between rows."""
from __future__ import annotations

from decimal import Decimal
from typing import Any, Sequence

from slfaas.bench.compare import PolicyRun

COLUMNS = (   # (key, heading) of the table
    ("policy", "policy"), ("completed", "done"), ("errors", "errors"),
    ("ttft_p50_ms", "TTFT p50 ms"), ("ttft_p90_ms", "TTFT p90 ms"), ("ttft_p99_ms", "TTFT p99 ms"),
    ("e2e_p50_ms", "E2E p50 ms"), ("e2e_p99_ms", "E2E p99 ms"), ("slo_attainment", "SLO"),
    ("throughput_rps", "req/s"), ("cold_starts", "cold starts"), ("user_device_s", "user GPU-s"),
    ("user_usd", "user $"), ("provider_device_s", "node GPU-s"), ("provider_usd", "provider $"),
)


def row(run: PolicyRun) -> dict[str, Any]:
    s, c = run.result.summary, run.cost
    by_source = run.cold_by_source
    return {
        "policy": run.policy.name + ("" if run.policy.complete else " (incomplete)"),
        "complete": run.policy.complete, "billing": c.billing, "requests": s.requests, "completed": s.completed,
        "errors": s.errors, "throttled": s.throttled,
        "ttft_p50_ms": s.ttft_ms.p50, "ttft_p90_ms": s.ttft_ms.p90, "ttft_p99_ms": s.ttft_ms.p99,
        "e2e_p50_ms": s.e2e_ms.p50, "e2e_p99_ms": s.e2e_ms.p99, "slo_ms": s.slo_ms,
        "slo_attainment": s.slo_attainment, "throughput_rps": s.throughput_rps,
        "output_tokens_per_s": s.output_tokens_per_s,
        "cold_starts": sum(by_source.values()), "cold_starts_by_source": by_source,
        "user_device_s": c.user_device_s, "user_usd": str(c.user_usd),
        "provider_device_s": c.provider_device_s, "provider_usd": str(c.provider_usd),
        "containers": c.containers, "window_s": c.window_s, "cost_explanation": c.explanation,
        "device_type": run.device_type, "device_total_mb": run.device_total_mb, "checks": dict(run.checks),
    }


def format_cell(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if key == "slo_attainment":
        return f"{100 * value:.1f}%"
    if key == "cold_starts" or key in ("completed", "errors"):
        return str(value)
    if key.endswith("_usd"):
        return f"{Decimal(value):.6f}"
    if isinstance(value, float):
        return f"{value:,.1f}" if abs(value) >= 10 else f"{value:.3g}"
    return str(value)


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    heads = [h for _k, h in COLUMNS]
    lines = ["| " + " | ".join(heads) + " |", "|" + "|".join("---" for _ in heads) + "|"]
    for r in rows:
        cells = [format_cell(k, r.get(k)) for k, _h in COLUMNS]
        by = r.get("cold_starts_by_source") or {}
        if by:
            cells[[k for k, _ in COLUMNS].index("cold_starts")] += " (" + ", ".join(f"{k} {v}" for k, v in by.items()) + ")"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def savings(rows: Sequence[dict[str, Any]], ours: str = "serverlesslora") -> dict[str, dict[str, float | None]]:
    """How much lower ``ours`` is than each other policy (fractions; negative: higher)."""
    mine = next((r for r in rows if r["policy"] == ours), None)
    if mine is None:
        return {}

    def lower(a: Any, b: Any) -> float | None:
        a, b = (None if v is None else float(v) for v in (a, b))
        return None if a is None or not b else 1 - a / b
    return {r["policy"]: {"ttft_p50": lower(mine["ttft_p50_ms"], r["ttft_p50_ms"]),
                          "user_cost": lower(mine["user_usd"], r["user_usd"]),
                          "provider_cost": lower(mine["provider_usd"], r["provider_usd"])}
            for r in rows if r is not mine}
