"""A comparison's results written out: everything as JSON, the table (``compare_table``) as
Markdown, the self-contained HTML report (``compare_html``) and PNG plots (``compare_png``)."""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from slfaas.bench.compare import Comparison
from slfaas.bench.errors import BenchError
from slfaas.bench.compare_html import render_html
from slfaas.bench.compare_png import write_pngs
from slfaas.bench.compare_table import markdown_table, row, savings
from slfaas.bench.policies import POLICIES, CommonSettings


OURS = ("serverlesslora", "serverlesslora-cobatched")   # slfaas's configurations: savings are theirs


def savings_of_ours(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """``savings_of_<policy>`` for each of slfaas's configurations in the rows (serverlesslora's
    always, empty without its row)."""
    present = {r["policy"] for r in rows}
    return {f"savings_of_{p}": savings(rows, p) for p in OURS if p == OURS[0] or p in present}


def savings_in(data: dict[str, Any]) -> dict[str, Any]:
    """The ``savings_of_*`` entries of a written comparison."""
    return {k: v for k, v in data.items() if k.startswith("savings_of_")}


def to_json(cmp: Comparison) -> dict[str, Any]:
    rows = [row(r) for r in cmp.runs]
    return {
        "started_unix": cmp.started_unix, "workload": cmp.workload, "common": asdict(cmp.common),
        "features": asdict(cmp.features), "policies": [r.policy.describe() for r in cmp.runs],
        "rows": rows, **savings_of_ours(rows),
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


# settings a comparison written before they existed had, as they were then
_EARLIER_COMMON = {"bill_keep_alive": False}   # containers billed up to the window's end


def _same_settings(old: dict[str, Any], new: dict[str, Any]) -> None:
    """Refuse to merge comparisons of different slices or settings, naming what differs."""
    def norm(d: Any) -> dict[str, Any]:
        return json.loads(json.dumps(d or {}, sort_keys=True, default=str))
    for key in ("workload", "common"):
        a, b = norm(old.get(key)), norm(new.get(key))
        if key == "common":
            a = {**_EARLIER_COMMON, **a}
        differ = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
        if differ:
            raise BenchError(f"cannot merge comparisons with different {key} ({', '.join(differ)}): run every "
                             f"policy on the same slice and settings, or write to another --out")


def check_mergeable(out_dir: Path | str, workload: dict[str, Any], common: CommonSettings) -> None:
    """Before any run: a comparison already in ``out_dir`` has the same slice and settings (a
    merge refused after the runs would lose them)."""
    path = Path(out_dir) / "comparison.json"
    if not path.is_file():
        return
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise BenchError(f"{path} cannot be read as a comparison ({exc}): write to another --out") from None
    _same_settings(old, {"workload": workload, "common": asdict(common)})


def merge(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """Two comparisons of the same slice and settings as one (``new``'s runs win); a run of
    policies split over several commands is reported together."""
    _same_settings(old, new)
    names = [p["name"] for p in new["policies"]]
    keep = [p["name"] for p in old["policies"] if p["name"] not in names]
    order = [n for n in POLICIES if n in keep + names] + [n for n in keep + names if n not in POLICIES]
    policies = {p["name"]: p for p in old["policies"] + new["policies"]}
    rows = {r["policy"].split(" ")[0]: r for r in old["rows"] + new["rows"]}
    runs = {**old["runs"], **new["runs"]}
    out = dict(new, policies=[policies[n] for n in order], rows=[rows[n] for n in order],
               runs={n: runs[n] for n in order})
    out.update(savings_of_ours(out["rows"]))
    return out


def write_comparison(cmp: Comparison, out_dir: Path | str, merge_existing: bool = False) -> dict[str, Path]:
    """comparison.json, table.md, report.html, per policy requests.jsonl + summary.json, and the
    PNG plots where matplotlib is installed (``png_note.txt`` says why not otherwise).
    ``merge_existing``: add to the comparison already in ``out_dir`` (same slice and settings)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = to_json(cmp)
    if merge_existing and (out / "comparison.json").is_file():
        data = merge(json.loads((out / "comparison.json").read_text()), json.loads(json.dumps(data, default=str)))
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
