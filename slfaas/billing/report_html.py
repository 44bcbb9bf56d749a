"""The cost report as ONE self-contained HTML file: inline CSS and inline SVG charts drawn
here, no scripts and no network, so it opens offline, in a mail attachment or a CI artifact.
Every chart has axis titles, a legend and ``<title>`` tooltips on its marks."""
from __future__ import annotations

import math
from datetime import datetime, timezone
from decimal import Decimal
from html import escape
from typing import Sequence

from slfaas.billing.report_render import TABLE_COLUMNS, pct, summary_lines, usd
from slfaas.billing.reports import Report, ReportRow

PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1",
           "#ff9da7", "#9c755f")
OTHER_COLOUR = "#a5a5a5"
SPLIT_COLOURS = {"init": "#e15759", "compute": "#4e79a7", "idle": "#bab0ac"}
CF_COLOURS = {"actual": "#59a14f", "no_sharing": "#f28e2b", "serverful": "#e15759"}
CF_LABELS = {"actual": "actual (shared)", "no_sharing": "no backbone sharing", "serverful": "serverful per function (estimate)"}
MAX_SERIES = len(PALETTE)   # functions drawn on their own; the rest are summed as "other"
MAX_BARS = 15
EMPTY = "no invocations in this window"

W = 1100                     # chart width (px); charts scale down with the page
FONT = 12

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;margin:0;
  background:#f6f7f9;color:#1d2330}
main{max-width:1180px;margin:0 auto;padding:24px 28px 40px}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:28px 0 8px}
.sub{color:#5b6475;margin:0 0 16px;font-size:13px}
.banner{border-radius:6px;padding:10px 14px;margin:0 0 16px;font-size:14px}
.banner.warning{background:#fff4d6;border:1px solid #e8b931}
.banner.exceeded{background:#fde2e1;border:1px solid #d64541}
.banner b{text-transform:uppercase;margin-right:6px}
.cards{display:grid;grid-template-columns:repeat(4,1fr);gap:12px}
.card{background:#fff;border:1px solid #dde1e8;border-radius:8px;padding:12px 14px}
.card .k{font-size:12px;color:#5b6475;text-transform:uppercase;letter-spacing:.03em}
.card .v{font-size:22px;font-weight:600;margin:4px 0 2px;font-variant-numeric:tabular-nums}
.card .d{font-size:12px;color:#5b6475}
table{border-collapse:collapse;background:#fff;font-size:12.5px;width:100%;
  font-variant-numeric:tabular-nums}
th,td{padding:5px 8px;border-bottom:1px solid #e5e8ee;text-align:right;white-space:nowrap}
th:first-child,td:first-child{text-align:left}
thead th{background:#eef1f5;font-weight:600}
tfoot td{font-weight:700;border-top:2px solid #9aa3b2}
dl{display:grid;grid-template-columns:170px 1fr;gap:4px 12px;font-size:13px;background:#fff;
  border:1px solid #dde1e8;border-radius:8px;padding:12px 14px;margin:0}
dt{color:#5b6475} dd{margin:0}
figure{background:#fff;border:1px solid #dde1e8;border-radius:8px;margin:0 0 16px;padding:10px 12px}
figcaption{font-weight:600;font-size:14px;margin-bottom:4px}
svg{display:block;width:100%;height:auto}
svg text{font-family:inherit}
.empty{color:#5b6475;font-style:italic}
"""


# ---- small SVG helpers --------------------------------------------------------------------

def _f(x: float) -> str:
    return f"{x:.2f}".rstrip("0").rstrip(".")


def _text(x: float, y: float, s: str, anchor: str = "start", size: int = FONT, extra: str = "") -> str:
    return (f'<text x="{_f(x)}" y="{_f(y)}" font-size="{size}" text-anchor="{anchor}"{extra}>'
            f"{escape(s)}</text>")


def _line(x1: float, y1: float, x2: float, y2: float, stroke: str = "#1d2330") -> str:
    return f'<line x1="{_f(x1)}" x2="{_f(x2)}" y1="{_f(y1)}" y2="{_f(y2)}" stroke="{stroke}"/>'


def _rect(x: float, y: float, w: float, h: float, fill: str, title: str = "", extra: str = "") -> str:
    tip = f"<title>{escape(title)}</title>" if title else ""
    return (f'<rect x="{_f(x)}" y="{_f(y)}" width="{_f(max(0.0, w))}" height="{_f(max(0.0, h))}" '
            f'fill="{fill}"{extra}>{tip}</rect>')


def nice_ticks(top: float, count: int = 5) -> list[float]:
    """0 and round steps (1, 2, 2.5, 5 × 10^k) up to at least ``top``."""
    if not top > 0 or not math.isfinite(top):
        return [0.0, 1.0]
    raw = top / count
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    n = math.ceil(top / step - 1e-9)
    return [i * step for i in range(n + 1)]


def _money_label(v: float, step: float) -> str:
    """Dollars with as many decimals as the tick step needs (at least cents)."""
    exp = Decimal(repr(round(step, 12))).normalize().as_tuple().exponent
    places = min(10, max(2, -exp if isinstance(exp, int) else 2))
    return f"${v:,.{places}f}"


def _svg(height: float, body: Sequence[str], label: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {_f(height)}" role="img" '
            f'aria-label="{escape(label)}">{"".join(body)}</svg>')


def _empty_svg(label: str, message: str = EMPTY) -> str:
    return _svg(120, [_rect(0, 0, W, 120, "#fafbfc"),
                      _text(W / 2, 64, message, "middle", 15, ' class="empty" fill="#5b6475"')], label)


def _legend(items: Sequence[tuple[str, str, str]], y: float, x0: float = 70) -> tuple[list[str], float]:
    """Swatch + name per item, wrapped into rows; returns the parts and the height used."""
    parts, x, row_h = [], x0, 20
    for name, colour, tip in items:
        w = 22 + 7.2 * len(name) + 18
        if x + w > W - 10 and x > x0:
            x, y = x0, y + row_h
        parts.append(f'<g class="legend-item">{_rect(x, y - 10, 12, 12, colour, tip)}'
                     f'{_text(x + 18, y, name)}</g>')
        x += w
    return parts, y + row_h


def _y_axis(ticks: list[float], y_of, left: float, right: float, title: str) -> list[str]:
    step = ticks[1] - ticks[0] if len(ticks) > 1 else 1.0
    out = []
    for t in ticks:
        y = y_of(t)
        out.append(_line(left, y, right, y, "#e5e8ee"))
        out.append(_text(left - 6, y + 4, _money_label(t, step), "end", 11, ' fill="#5b6475"'))
    mid = (y_of(ticks[0]) + y_of(ticks[-1])) / 2
    out.append(_text(16, mid, title, "middle", FONT, f' transform="rotate(-90 16 {_f(mid)})" fill="#1d2330"'))
    return out


# ---- chart 1: cost over time per function ----------------------------------------------------

def _top_series(report: Report) -> list[tuple[str, list[float], Decimal]]:
    totals = sorted(((sum(v, Decimal(0)), fn) for fn, v in report.series.items()), key=lambda t: (-t[0], t[1]))
    n = len(report.series_buckets)
    keep = totals if len(totals) <= MAX_SERIES else totals[:MAX_SERIES - 1]
    out = [(fn, [float(v) for v in report.series[fn]], tot) for tot, fn in keep]
    rest = totals[len(keep):]
    if rest:
        vals = [float(sum((report.series[fn][i] for _, fn in rest), Decimal(0))) for i in range(n)]
        out.append((f"other ({len(rest)} functions)", vals, sum((t for t, _ in rest), Decimal(0))))
    return out


def _bucket_label(key: str, step_s: int, multi_day: bool) -> str:
    if step_s >= 86400:
        return key
    return key[5:16].replace("T", " ") if multi_day else key[11:16]


def chart_cost_over_time(report: Report) -> str:
    label = "Cost over time per function"
    series = _top_series(report)
    n = len(report.series_buckets)
    if report.total.invocations == 0 or not series or n == 0:
        return _empty_svg(label)
    left, right, top, plot_h = 90, W - 20, 16, 250
    stacked = [0.0] * n
    for _, vals, _ in series:
        stacked = [a + b for a, b in zip(stacked, vals)]
    ticks = nice_ticks(max(stacked))
    y_of = lambda v: top + plot_h - v / ticks[-1] * plot_h  # noqa: E731
    xs = ([left + (i + 0.5) * (right - left) / n for i in range(n)] if n > 1 else [left, right])
    body = _y_axis(ticks, y_of, left, right, f"cost per {_step_name(report.series_step_s)} (USD)")
    base = [0.0] * n
    colours = [PALETTE[i] if not name.startswith("other (") else OTHER_COLOUR for i, (name, _, _) in enumerate(series)]
    for (name, vals, total), colour in zip(series, colours):
        upper = [b + v for b, v in zip(base, vals)]
        if n == 1:
            upper, lower = upper * 2, base * 2
        else:
            lower = base
        pts = [f"{_f(x)},{_f(y_of(v))}" for x, v in zip(xs, upper)]
        pts += [f"{_f(x)},{_f(y_of(v))}" for x, v in reversed(list(zip(xs, lower)))]
        body.append(f'<polygon points="{" ".join(pts)}" fill="{colour}" fill-opacity="0.85" '
                    f'stroke="{colour}" stroke-width="1"><title>{escape(name)}: {usd(total)} in the window'
                    f"</title></polygon>")
        base = upper[:n] if n > 1 else upper[:1]
    # hover columns: one tooltip per bucket with every function's cost in it
    col_w = (right - left) / n
    multi_day = report.series_buckets[0][:10] != report.series_buckets[-1][:10]
    for i, key in enumerate(report.series_buckets):
        lines = [f"{key}: total {usd(Decimal(repr(stacked[i])))}"]
        lines += [f"{name}: ${vals[i]:.6f}" for name, vals, _ in series if vals[i]]
        body.append(_rect(left + i * col_w, top, col_w, plot_h, "transparent", "\n".join(lines),
                          ' pointer-events="all"'))
    # x axis
    body.append(_line(left, top + plot_h, right, top + plot_h))
    for i in sorted({round(j * (n - 1) / min(7, max(1, n - 1))) for j in range(min(7, max(1, n - 1)) + 1)}):
        x = xs[i] if n > 1 else (left + right) / 2
        body.append(_line(x, top + plot_h, x, top + plot_h + 5))
        body.append(_text(x, top + plot_h + 18, _bucket_label(report.series_buckets[i], report.series_step_s,
                                                              multi_day), "middle", 11, ' fill="#5b6475"'))
    day = "" if multi_day or report.series_step_s >= 86400 else f", {report.series_buckets[0][:10]}"
    body.append(_text((left + right) / 2, top + plot_h + 38,
                      f"time (UTC{day}), by {_step_name(report.series_step_s)} of invocation end", "middle"))
    legend, h = _legend([(name, c, f"{name}: {usd(t)}") for (name, _, t), c in zip(series, colours)],
                        top + plot_h + 62)
    return _svg(h, body + legend, label)


def _step_name(step_s: int) -> str:
    return {60: "minute", 3600: "hour", 86400: "day"}.get(step_s, f"{step_s // 86400} days")


# ---- chart 2: init / compute / idle per function ----------------------------------------------

def chart_cost_split(report: Report) -> str:
    label = "Cost split init / compute / idle per function"
    splits = sorted(report.function_splits,
                    key=lambda s: (-(s.init_cost_usd + s.compute_cost_usd + s.idle_cost_usd), s.function_name))
    bars = [(s.function_name, float(s.init_cost_usd), float(s.compute_cost_usd), float(s.idle_cost_usd), s.idle_s)
            for s in splits[:MAX_BARS]]
    rest = splits[MAX_BARS:]
    if rest:
        def rest_sum(attr: str) -> float:
            return float(sum((getattr(s, attr) for s in rest), Decimal(0)))
        bars.append((f"other ({len(rest)} functions)", rest_sum("init_cost_usd"), rest_sum("compute_cost_usd"),
                     rest_sum("idle_cost_usd"), math.fsum(s.idle_s for s in rest)))
    top_v = max((i + c + d for _, i, c, d, _ in bars), default=0.0)
    if not bars or top_v <= 0:
        return _empty_svg(label)
    name_w = min(260, 40 + 7 * max(len(b[0]) for b in bars))
    left, right, top, bar_h, gap = name_w, W - 90, 10, 20, 10
    ticks = nice_ticks(top_v)
    x_of = lambda v: left + v / ticks[-1] * (right - left)  # noqa: E731
    plot_h = len(bars) * (bar_h + gap)
    step = ticks[1] - ticks[0]
    body = []
    for t in ticks:
        body.append(_line(x_of(t), top, x_of(t), top + plot_h, "#e5e8ee"))
        body.append(_text(x_of(t), top + plot_h + 16, _money_label(t, step), "middle", 11, ' fill="#5b6475"'))
    for k, (name, init, compute, idle, idle_s) in enumerate(bars):
        y = top + k * (bar_h + gap) + gap / 2
        total = init + compute + idle
        body.append(_text(left - 8, y + 14, name, "end"))
        x = left
        for part, v, extra in (("init", init, "billed: cold starts"), ("compute", compute, "billed: requests"),
                               ("idle", idle, f"not billed: {idle_s:.1f} device-s of keep-alive and overhead")):
            w = x_of(v) - left
            share = v / total if total else 0.0
            body.append(_rect(x, y, w, bar_h, SPLIT_COLOURS[part],
                              f"{name} {part}: ${v:.6f} ({pct(share)}) — {extra}"))
            x += w
        body.append(_text(x + 6, y + 14, f"${total:.4f}", "start", 11, ' fill="#5b6475"'))
    body.append(_line(left, top, left, top + plot_h))
    body.append(_text((left + right) / 2, top + plot_h + 36, "cost in the window (USD)", "middle"))
    body.append(_text(14, top + plot_h / 2, "function", "middle", FONT,
                      f' transform="rotate(-90 14 {_f(top + plot_h / 2)})"'))
    legend, h = _legend([("init (cold start, billed)", SPLIT_COLOURS["init"],
                          "init device-seconds billed to the invocation that caused the cold start"),
                         ("compute (billed)", SPLIT_COLOURS["compute"],
                          "request fees and the request's share of its batch"),
                         ("idle (keep-alive + overhead, not billed)", SPLIT_COLOURS["idle"],
                          "the function's keep-alive and its share of the node's other overhead, at the node's rate")],
                        top + plot_h + 60, left)
    return _svg(h, body + legend, label)


# ---- chart 3: actual vs counterfactuals --------------------------------------------------------

def chart_counterfactuals(report: Report) -> str:
    label = "Actual cost vs counterfactual policies"
    cfs = list(report.counterfactuals)
    top_v = max((float(c.cost_usd) for c in cfs), default=0.0)
    if not cfs or top_v <= 0:
        return _empty_svg(label)
    left, right, top, plot_h = 90, W - 20, 30, 200
    ticks = nice_ticks(top_v)
    y_of = lambda v: top + plot_h - v / ticks[-1] * plot_h  # noqa: E731
    body = _y_axis(ticks, y_of, left, right, "cost in the window (USD)")
    slot = (right - left) / len(cfs)
    bar_w = min(160, slot * 0.5)
    for k, c in enumerate(cfs):
        x = left + k * slot + (slot - bar_w) / 2
        v = float(c.cost_usd)
        colour = CF_COLOURS.get(c.name, OTHER_COLOUR)
        tip = f"{CF_LABELS.get(c.name, c.name)}: {usd(c.cost_usd)}, {c.device_s:.1f} device-s — {c.explanation}"
        body.append(_rect(x, y_of(v), bar_w, y_of(0) - y_of(v), colour, tip))
        body.append(_text(x + bar_w / 2, y_of(v) - 18, usd(c.cost_usd), "middle", FONT, ' font-weight="600"'))
        if c.name in report.savings:
            saved, frac = report.savings[c.name]
            word = "saves" if saved >= 0 else "costs"
            body.append(_text(x + bar_w / 2, y_of(v) - 4, f"actual {word} {pct(abs(frac))}", "middle", 11,
                              ' fill="#2f7d32"' if saved >= 0 else ' fill="#c0392b"'))
        body.append(_text(x + bar_w / 2, top + plot_h + 18, CF_LABELS.get(c.name, c.name), "middle"))
    body.append(_line(left, top + plot_h, right, top + plot_h))
    body.append(_text((left + right) / 2, top + plot_h + 38, "policy (same invocations)", "middle"))
    legend, h = _legend([(CF_LABELS.get(c.name, c.name), CF_COLOURS.get(c.name, OTHER_COLOUR), c.explanation)
                         for c in cfs], top + plot_h + 62)
    return _svg(h, body + legend, label)


# ---- page --------------------------------------------------------------------------------------

def _fmt_ts(ts: float) -> str:
    return (datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
            if math.isfinite(ts) else str(ts))


def _banner(report: Report) -> str:
    out = []
    for level in ("exceeded", "warning"):
        msgs = [b for b in report.budgets if b.level == level]
        if msgs:
            items = "<br>".join(escape(b.message) for b in msgs)
            out.append(f'<div class="banner {level}" role="alert"><b>budget {level}</b>{items}</div>')
    return "".join(out)


def _card(k: str, v: str, d: str) -> str:
    return (f'<div class="card"><div class="k">{escape(k)}</div><div class="v">{escape(v)}</div>'
            f'<div class="d">{escape(d)}</div></div>')


def _table(report: Report) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in (report.group_by, *(c[1] for c in TABLE_COLUMNS)))

    def tr(r: ReportRow, cell: str = "td") -> str:
        cells = (r.key, *(c[2](r) for c in TABLE_COLUMNS))
        return "<tr>" + "".join(f"<{cell}>{escape(v)}</{cell}>" for v in cells) + "</tr>"

    body = "".join(tr(r) for r in report.rows) or \
        f'<tr><td class="empty" colspan="{len(TABLE_COLUMNS) + 1}">{EMPTY}</td></tr>'
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody><tfoot>{tr(report.total)}</tfoot></table>"


def render_html(report: Report) -> str:
    t = report.total
    share = report.platform_overhead_s / report.node_elapsed_s if report.node_elapsed_s else 0.0
    best = max(report.savings.items(), key=lambda kv: kv[1][1], default=None)
    cards = [
        _card("Billed to users", usd(report.billed_cost_usd, 4),
              f"{t.invocations} invocations ({t.cold_starts} cold), {t.billed_device_s:.1f} s"),
        _card("Node spent", usd(report.node_cost_usd, 4),
              f"{report.node_elapsed_s:.1f} s on {len(report.node_ids)} node(s)"),
        _card("Platform overhead", usd(report.platform_overhead_usd, 4),
              f"{report.platform_overhead_s:.1f} s, {pct(share)} of node time"),
        _card("Savings" + (f" vs {best[0].replace('_', ' ')}" if best else ""),
              pct(best[1][1]) if best else "–", f"{usd(best[1][0], 4)} saved" if best else "no counterfactuals"),
    ]
    summary = "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in summary_lines(report))
    scope = f" · function {escape(report.function_name)}" if report.function_name else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>slfaas cost report {escape(_fmt_ts(report.since_ts))} – {escape(_fmt_ts(report.until_ts))}</title>
<style>{CSS}</style></head>
<body><main>
<h1>slfaas cost report</h1>
<p class="sub">{escape(_fmt_ts(report.since_ts))} – {escape(_fmt_ts(report.until_ts))} · \
grouped by {escape(report.group_by)}{scope} · {escape(report.currency)}</p>
{_banner(report)}
<div class="cards">{"".join(cards)}</div>
<h2>Cost over time per function</h2>
<figure><figcaption>Billed cost per function, stacked</figcaption>{chart_cost_over_time(report)}</figure>
<h2>Where the money goes</h2>
<figure><figcaption>Init / compute (billed) and idle (platform overhead) per function</figcaption>
{chart_cost_split(report)}</figure>
<figure><figcaption>Actual cost vs counterfactual policies</figcaption>{chart_counterfactuals(report)}</figure>
<h2>Summary</h2>
<dl>{summary}</dl>
<h2>Invocations by {escape(report.group_by)}</h2>
{_table(report)}
</main></body></html>
"""
