"""What ``slfaas node status`` shows: the node's report (GET /slfaas/v1/node) plus its recent
invocations with what each cost, as JSON for scripts or as sections of tables for people."""
from __future__ import annotations

import time
import urllib.parse
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from rich.console import Group, RenderableType
from rich.text import Text

from slfaas.client import api
from slfaas.cli.ui import print_table, rich_table, stdout_console

# keys of the node's report that a section of its own shows; any other list of records (a
# newer node's, e.g. adapter tiers) is shown as a generic table
_SHOWN = {"NodeId", "Device", "Sandbox", "Backbones", "Instances", "Gpu", "RecentInvocations", "Nodes"}


@dataclass(frozen=True)
class Section:
    title: str
    headers: tuple[str, ...]
    rows: list[list[str]]
    right: tuple[str, ...] = ()


def snapshot(url: str, invocations: int) -> dict:
    """The node's report as the server gives it, plus ``RecentInvocations`` (newest first)."""
    node = api(url, "GET", "/slfaas/v1/node")
    recent = api(url, "GET", f"/slfaas/v1/invocations?limit={invocations}")["Invocations"] if invocations else []
    cost: dict[str, Decimal] = {}
    if recent:
        since = min(r["start_ts"] for r in recent)
        for u in api(url, "GET", "/slfaas/v1/cost/usage?" + urllib.parse.urlencode({"since": since}))["Usage"]:
            cost[u["request_id"]] = cost.get(u["request_id"], Decimal(0)) + Decimal(u["cost_usd"])  # an attempt each
    keep = ("request_id", "function_name", "version", "status", "start_ts", "duration_ms", "init_duration_ms",
            "cold_start", "ttft_ms", "instance_id", "error_type")
    node["RecentInvocations"] = [{**{k: r.get(k) for k in keep},
                                  "cost_usd": str(cost[r["request_id"]]) if r["request_id"] in cost else None}
                                 for r in recent]
    return node


def _age(seconds: float) -> str:
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _num(value: Any, fmt: str) -> str:
    return "" if value is None else format(value, fmt)


def header(node: dict) -> str:
    live = [n for n in node.get("Nodes") or [] if n.get("State") == "alive"]
    if len(node.get("Nodes") or []) > 1:
        return (f"{len(live)} of {len(node['Nodes'])} nodes alive  devices {node['Device']}  "
                f"sandbox {node['Sandbox']}")
    return f"node {node['NodeId']}  device {node['Device']}  sandbox {node['Sandbox']}"


def gpu_line(node: dict) -> str | None:
    """One line per GPU: the node's, or each node's when there are several."""
    gpus = [node["Gpu"]] if node.get("Gpu") else [n["Gpu"] for n in node.get("Nodes") or [] if n.get("Gpu")]
    if not gpus:
        return None
    return "\n".join(f"GPU {gpu['device'] + ' ' if len(gpus) > 1 else ''}{gpu['name']}: {gpu['used_mb']} / "
                     f"{gpu['total_mb']} MiB used ({gpu['free_mb']} free); backbones {gpu['backbones_mb']} MiB, "
                     f"adapters {gpu['adapters_mb']} MiB" for gpu in gpus)


def sections(node: dict, now_ts: float) -> list[Section]:
    out = [Section("Backbones", ("MODEL", "DEVICE", "SIZE MB", "LOADED IN S", "GB/S"),
                   [[Path(b["model_path"]).name, b["device"], _num(b["size_bytes"] / 1e6, ".1f"),
                     _num(b["load_s"], ".2f"), _num(b["load_gb_per_s"], ".1f")] for b in node["Backbones"]],
                   ("SIZE MB", "LOADED IN S", "GB/S"))]
    members = node.get("Nodes") or []
    if len(members) > 1:   # several nodes: each one's line, and where each instance runs
        out.append(Section("Nodes", ("NODE", "STATE", "DEVICE", "HOST", "INSTANCES", "MAX", "BACKBONES"),
                           [[n["NodeId"], n["State"], n["Device"], n.get("Host") or "", str(n["Instances"]),
                             str(n["MaxInstances"]), str(len(n["Backbones"]))] for n in members],
                           ("INSTANCES", "MAX", "BACKBONES")))
    gpu_by_instance = dict((node.get("Gpu") or {}).get("instances") or {})
    for n in members:
        gpu_by_instance.update((n.get("Gpu") or {}).get("instances") or {})
    rows = []
    for i in sorted(node["Instances"], key=lambda i: (i["function_name"], i["version"], i["started_ts"])):
        idle = _age(now_ts - max(i["last_used_ts"], i["started_ts"])) if i["state"] == "IDLE" else ""
        rows.append([i["function_name"], i["version"], i["instance_id"], i["state"], idle, str(i["invocations"]),
                     "" if i["pid"] is None else str(i["pid"]), i.get("node_id") or "",
                     _num(gpu_by_instance.get(i["instance_id"]), "d")])
    headers: tuple[str, ...] = ("FUNCTION", "VERSION", "INSTANCE", "STATE", "IDLE", "INVOCATIONS", "PID", "NODE",
                                "GPU MIB")
    drop = {len(headers) - 1} if not gpu_by_instance else set()
    if len(members) <= 1:
        drop.add(len(headers) - 2)
    headers = tuple(h for k, h in enumerate(headers) if k not in drop)
    rows = [[c for k, c in enumerate(r) if k not in drop] for r in rows]
    out.append(Section("Instances", headers, rows, ("IDLE", "INVOCATIONS", "PID", "GPU MIB")))
    for key, value in node.items():
        if key not in _SHOWN and isinstance(value, list) and all(isinstance(v, dict) for v in value):
            cols = tuple(dict.fromkeys(k for v in value for k in v))
            out.append(Section(key, tuple(c.upper() for c in cols), [[str(v.get(c, "")) for c in cols] for v in value]))
    out.append(Section("Recent invocations", ("TIME", "FUNCTION", "START", "STATUS", "DURATION MS", "TTFT MS",
                                              "COST USD", "REQUEST"),
                       [[time.strftime("%H:%M:%S", time.localtime(r["start_ts"])),
                         f"{r['function_name']}:{r['version']}", "cold" if r["cold_start"] else "warm",
                         r["status"] + (f" ({r['error_type']})" if r.get("error_type") else ""),
                         _num(r["duration_ms"], ".1f"), _num(r["ttft_ms"], ".1f"), r["cost_usd"] or "",
                         r["request_id"][:8]] for r in node.get("RecentInvocations", [])],  # all of it: -o json
                       ("DURATION MS", "TTFT MS", "COST USD")))
    return out


def renderable(node: dict, now_ts: float) -> RenderableType:
    parts: list[RenderableType] = [Text(header(node), style="bold")]
    gpu = gpu_line(node)
    if gpu:
        parts.append(Text(gpu))
    for s in sections(node, now_ts):
        parts += [Text(""), rich_table(s.headers, s.rows, f"{s.title} ({len(s.rows)})", s.right)]
    return Group(*parts)


def print_status(node: dict, now_ts: float) -> None:
    """Rich tables on a terminal; plain aligned columns when piped."""
    console = stdout_console()
    if console.is_terminal:
        console.print(renderable(node, now_ts))
        return
    import click

    click.echo(header(node))
    gpu = gpu_line(node)
    if gpu:
        click.echo(gpu)
    for s in sections(node, now_ts):
        click.echo("")
        print_table(s.headers, s.rows, f"{s.title} ({len(s.rows)})", s.right)
