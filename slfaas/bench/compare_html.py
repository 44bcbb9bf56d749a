"""The comparison as ONE self-contained HTML file (inline CSS and SVG, no scripts, no network,
like the cost report): the table, TTFT CDFs per policy, both costs per policy, and a
timeline of each run's instances and device memory."""
from __future__ import annotations

import math
from html import escape
from typing import Any, Mapping, Sequence

from slfaas.billing.report_html import CSS, PALETTE, W, nice_ticks
from slfaas.bench.compare_table import COLUMNS, format_cell

FONT = 12
L, R, T = 80, 30, 20     # plot margins (px)


def _f(x: float) -> str:
    return f"{x:.2f}".rstrip("0").rstrip(".")


def _text(x: float, y: float, s: str, anchor: str = "start", size: int = FONT, extra: str = "") -> str:
    return f'<text x="{_f(x)}" y="{_f(y)}" font-size="{size}" text-anchor="{anchor}"{extra}>{escape(s)}</text>'


def _line(x1: float, y1: float, x2: float, y2: float, stroke: str = "#1d2330", extra: str = "") -> str:
    return f'<line x1="{_f(x1)}" x2="{_f(x2)}" y1="{_f(y1)}" y2="{_f(y2)}" stroke="{stroke}"{extra}/>'


def _path(points: Sequence[tuple[float, float]], colour: str, title: str, dash: str = "") -> str:
    d = " ".join(f"{'M' if i == 0 else 'L'}{_f(x)},{_f(y)}" for i, (x, y) in enumerate(points))
    style = f' stroke-dasharray="{dash}"' if dash else ""
    return (f'<path d="{d}" fill="none" stroke="{colour}" stroke-width="2"{style}>'
            f"<title>{escape(title)}</title></path>")


def _svg(height: float, body: Sequence[str], label: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {_f(height)}" role="img" '
            f'aria-label="{escape(label)}">{"".join(body)}</svg>')


def _legend(names: Sequence[str], y: float) -> list[str]:
    out: list[str] = []
    x = float(L)
    for i, name in enumerate(names):
        out.append(f'<rect x="{_f(x)}" y="{_f(y - 10)}" width="12" height="12" fill="{PALETTE[i % len(PALETTE)]}"/>')
        out.append(_text(x + 18, y, name))
        x += 40 + 7.2 * len(name)
    return out


def _axes(x0: float, y0: float, width: float, height: float, yticks: Sequence[float], ylabel: str,
          fmt: Any = lambda v: f"{v:g}") -> list[str]:
    top = yticks[-1] or 1.0
    out = [_line(x0, y0, x0, y0 - height), _line(x0, y0, x0 + width, y0)]
    for t in yticks:
        y = y0 - height * t / top
        out += [_line(x0, y, x0 + width, y, "#e5e8ee"), _text(x0 - 6, y + 4, fmt(t), "end")]
    out.append(_text(16, y0 - height / 2, ylabel, "middle", FONT, f' transform="rotate(-90 16 {_f(y0 - height / 2)})"'))
    return out


def ttft_cdf_svg(series: Mapping[str, Sequence[float]]) -> str:
    """Each policy's TTFT CDF, on a log time axis when it spans more than two decades."""
    data = {k: sorted(v) for k, v in series.items() if v}
    if not data:
        return _svg(80, [_text(W / 2, 44, "no completed requests", "middle")], "TTFT CDF")
    lo = max(min(v[0] for v in data.values()), 1e-3)
    hi = max(max(v[-1] for v in data.values()), lo * 1.01)
    log = hi / lo > 100
    width, height, y0 = W - L - R, 300, T + 300

    def x(ms: float) -> float:
        if log:
            return L + width * (math.log10(max(ms, lo)) - math.log10(lo)) / (math.log10(hi) - math.log10(lo))
        return L + width * ms / hi
    body = _axes(L, y0, width, height, [0, 0.25, 0.5, 0.75, 1.0], "fraction of requests", lambda v: f"{v:.2f}")
    ticks = [10 ** k for k in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)] if log \
        else nice_ticks(hi)
    for t in ticks:
        if (lo <= t <= hi) or not log:
            body += [_line(x(t), y0, x(t), y0 + 5), _text(x(t), y0 + 18, f"{t:,.0f}" if t >= 1 else f"{t:g}", "middle")]
    body.append(_text(L + width / 2, y0 + 38, "TTFT (ms, from the scheduled arrival" + (", log scale)" if log else ")"),
                      "middle"))
    for i, (name, values) in enumerate(data.items()):
        n = len(values)
        pts = [(x(values[0]), y0)]
        for k, v in enumerate(values):   # a step at each request: the empirical CDF
            pts += [(x(v), y0 - height * k / n), (x(v), y0 - height * (k + 1) / n)]
        body.append(_path(pts, PALETTE[i % len(PALETTE)],
                          f"{name}: {n} requests, median {values[n // 2]:,.0f} ms"))
    body += _legend(list(data), y0 + 62)
    return _svg(y0 + 76, body, "TTFT CDF per policy")


def cost_bars_svg(rows: Sequence[Mapping[str, Any]]) -> str:
    """Per policy, two bars: what the user pays and what the provider's node costs."""
    if not rows:
        return _svg(80, [_text(W / 2, 44, "no runs", "middle")], "cost per policy")
    values = [(r["policy"], float(r["user_usd"]), float(r["provider_usd"])) for r in rows]
    top = max(max(u, p) for _n, u, p in values) or 1.0
    ticks = nice_ticks(top)
    width, height, y0 = W - L - R, 260, T + 260
    body = _axes(L, y0, width, height, ticks, "USD", lambda v: f"${v:.4g}")
    slot = width / len(values)
    for i, (name, user, provider) in enumerate(values):
        x0 = L + i * slot + slot * 0.15
        bw = slot * 0.33
        for k, (label, v) in enumerate((("user pays", user), ("provider's node", provider))):
            h = height * v / ticks[-1]
            body.append(f'<rect x="{_f(x0 + k * bw)}" y="{_f(y0 - h)}" width="{_f(bw * 0.95)}" height="{_f(h)}" '
                        f'fill="{PALETTE[k]}"><title>{escape(f"{name}: {label} ${v:.6f}")}</title></rect>')
            body.append(_text(x0 + k * bw + bw / 2, y0 - h - 4, f"${v:.4g}", "middle", 10))
        body.append(_text(L + (i + 0.5) * slot, y0 + 18, name, "middle"))
    body += _legend(["what the user pays", "the provider's node GPU-seconds"], y0 + 44)
    return _svg(y0 + 58, body, "cost per policy")


def timeline_svg(runs: Mapping[str, Mapping[str, Any]]) -> str:
    """One panel per policy: instances alive (solid) and device memory used (dashed, right axis
    in GiB, when the node has a GPU) from the window's start."""
    panel, gap, body, y = 120, 46, [], T
    for i, (name, run) in enumerate(runs.items()):
        since = run["window"]["since_ts"]
        samples = [s for s in run["samples"] if s["ts"] >= since - 1]
        span = max([run["window"]["until_ts"] - since] + [s["ts"] - since for s in samples] + [1.0])
        width, y0 = W - L - R - 40, y + panel
        top_n = max([s["instances"] for s in samples] + [1])
        ticks = nice_ticks(top_n, 3)
        body += _axes(L, y0, width, panel, ticks, "instances")
        body.append(_text(L, y - 4, name, "start", 13, ' font-weight="600"'))

        def px(t: float) -> float:
            return L + width * max(0.0, t - since) / span
        colour = PALETTE[i % len(PALETTE)]
        if samples:
            body.append(_path([(px(s["ts"]), y0 - panel * s["instances"] / ticks[-1]) for s in samples], colour,
                              f"{name}: instances alive"))
            used = [(s["ts"], s["device_used_mb"]) for s in samples if s["device_used_mb"] is not None]
            total = next((s["device_total_mb"] for s in samples if s["device_total_mb"]), None)
            if used and total:
                body.append(_path([(px(t), y0 - panel * mb / total) for t, mb in used], colour,
                                  f"{name}: device memory used (of {total / 1024:.0f} GiB)", "5,3"))
                body.append(_text(L + width + 4, y0 - panel + 4, f"{total / 1024:.0f} GiB", "start", 10))
        body += [_text(px(since + span), y0 + 14, f"{span:.0f} s", "end", 10)]
        y = y0 + gap
    if not runs:
        body.append(_text(W / 2, 40, "no runs", "middle"))
    body.append(_text(L, y, "solid: instances alive; dashed: device memory in use (share of the GPU, right)", "start",
                      11, ' fill="#5b6475"'))
    return _svg(y + 10, body, "instances and device memory over each run")


def _table(rows: Sequence[Mapping[str, Any]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for _k, h in COLUMNS)
    lines = []
    for r in rows:
        cells = [format_cell(k, r.get(k)) for k, _h in COLUMNS]
        by = r.get("cold_starts_by_source") or {}
        cells[[k for k, _ in COLUMNS].index("cold_starts")] += "".join(f" {escape(k)}:{v}" for k, v in by.items())
        lines.append("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(lines)}</tbody></table>"


def render_html(data: Mapping[str, Any]) -> str:
    w, c = data["workload"], data["common"]
    spec = w.get("spec", {})
    sub = (f"{w['requests']} requests of {escape(str(w['source']))} over {len(w['functions'])} functions "
           f"({escape(str(spec.get('popularity')))}), caps prompt {spec.get('max_prompt_tokens')} / output "
           f"{spec.get('max_output_tokens')} tokens; device {escape(str(c['device']))}, keep-alive "
           f"{c['keep_alive_s']:g} s, {c['max_instances']} instances at most, MemorySize {c['memory_mb']} MB, "
           f"SLO TTFT {c['slo_ms']} ms")
    notes = [f"<li><b>{escape(p['name'])}</b>: {escape(n)}</li>" for p in data["policies"] for n in p["notes"]]
    policies = "".join(f"<dt>{escape(p['name'])}</dt><dd><code>slfaas server {escape(' '.join(p['server_args']))}"
                       f"</code>; functions {escape(str(p['function_env']))}; billed {escape(p['billing'])}</dd>"
                       for p in data["policies"])
    ttft = {name: run["ttft_ms"] for name, run in data["runs"].items()}
    return ("<!doctype html><html><head><meta charset='utf-8'><title>slfaas policy comparison</title>"
            f"<style>{CSS}</style></head><body><main><h1>Serving policies on one trace slice</h1>"
            f"<p class='sub'>{sub}</p>"
            + (f"<div class='banner warning'><ul>{''.join(notes)}</ul></div>" if notes else "")
            + f"<h2>Results</h2>{_table(data['rows'])}"
            + f"<h2>TTFT</h2><figure><figcaption>TTFT CDF per policy</figcaption>{ttft_cdf_svg(ttft)}</figure>"
            + f"<h2>Cost</h2><figure><figcaption>What the user pays and what the provider's node costs"
              f"</figcaption>{cost_bars_svg(data['rows'])}</figure>"
            + f"<h2>Timeline</h2><figure><figcaption>Instances and device memory</figcaption>"
              f"{timeline_svg(data['runs'])}</figure>"
            + f"<h2>Policies</h2><dl>{policies}</dl></main></body></html>\n")
