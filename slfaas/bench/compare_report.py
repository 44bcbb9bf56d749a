"""A comparison's results written out: everything as JSON, the table (``compare_table``) as
Markdown, the self-contained HTML report (``compare_html``) and PNG plots (``compare_png``)."""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from slfaas.bench.compare import Comparison
from slfaas.bench.compare_html import render_html
from slfaas.bench.compare_png import write_pngs
from slfaas.bench.compare_table import markdown_table, row, savings


def to_json(cmp: Comparison) -> dict[str, Any]:
    rows = [row(r) for r in cmp.runs]
    return {
        "started_unix": cmp.started_unix, "workload": cmp.workload, "common": asdict(cmp.common),
        "features": asdict(cmp.features), "policies": [r.policy.describe() for r in cmp.runs],
        "rows": rows, "savings_of_serverlesslora": savings(rows),
        "runs": {r.policy.name: {
            "window": {"since_ts": r.since_ts, "until_ts": r.until_ts},
            "cost": {**asdict(r.cost), "user_usd": str(r.cost.user_usd), "provider_usd": str(r.cost.provider_usd)},
            "ttft_ms": [x.ttft_ms for x in r.result.records if x.ok and x.ttft_ms is not None],
            "samples": [s.to_json() for s in r.samples],
            "instances": [asdict(i) for i in r.instances],
            "nodes": [{**asdict(n), "overhead_s": dict(n.overhead_s),
                       "keep_alive_by_function_s": dict(n.keep_alive_by_function_s)} for n in r.nodes],
        } for r in cmp.runs},
    }


def write_comparison(cmp: Comparison, out_dir: Path | str) -> dict[str, Path]:
    """comparison.json, table.md, report.html, per policy requests.jsonl + summary.json, and the
    PNG plots where matplotlib is installed (``png_note`` says why not otherwise)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = to_json(cmp)
    paths = {"json": out / "comparison.json", "table": out / "table.md", "html": out / "report.html"}
    paths["json"].write_text(json.dumps(data, indent=1, default=str) + "\n")
    paths["table"].write_text(markdown_table(data["rows"]))
    paths["html"].write_text(render_html(data))
    for run in cmp.runs:
        run.result.write(out / run.policy.name)
    pngs, note = write_pngs(data, out)
    paths.update(pngs)
    if note:
        (out / "png_note.txt").write_text(note + "\n")
    return paths
