"""Progress (live on a terminal, plain lines otherwise, silent with --quiet), tables, and the
node status view's sections."""
from __future__ import annotations

import io

import pytest
from rich.console import Console

from slfaas.cli.node_view import gpu_line, header, sections
from slfaas.cli.ui import Ui, print_table


def _terminal() -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, force_terminal=True, width=120), buf


def test_live_progress_on_a_terminal() -> None:
    console, buf = _terminal()
    ui = Ui(console=console)
    assert ui.live
    with ui.step("waiting for Active") as step:
        step.update("State Pending")
        step.note("a line of the work's own output")
        step.done("fn is Active")
    with ui.counted("training", 3) as advance:
        for _ in range(3):
            advance()
    out = buf.getvalue()
    assert "✓" in out and "fn is Active" in out and "a line of the work's own output" in out
    assert "3/3" in out


def test_plain_lines_when_not_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    ui = Ui(console=Console(file=io.StringIO(), force_terminal=False))
    assert not ui.live
    with ui.step("waiting for the function to become Active") as step:
        for state in ("Pending", "Pending", "Active"):
            step.update(f"State {state}")
        step.note("note")
    with ui.step("only live", plain=False) as step:
        step.update("x")
    with ui.counted("training", 2) as advance:
        advance()
    captured = capsys.readouterr()
    assert captured.out == ""  # progress never goes to stdout
    # no escape codes, each change once
    assert captured.err.splitlines() == ["waiting for the function to become Active", "  State Pending",
                                         "  State Active", "note", "training"]
    assert "\x1b[" not in captured.err


def test_quiet_says_nothing_even_on_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    console, buf = _terminal()
    ui = Ui(quiet=True, console=console)
    assert not ui.live
    with ui.step("step") as step:
        step.update("detail")
        step.note("note")
    with ui.counted("count", 2) as advance:
        advance()
    assert buf.getvalue() == "" and capsys.readouterr().err == ""


def test_plain_table_is_aligned_for_grep_and_awk(capsys: pytest.CaptureFixture[str]) -> None:
    print_table(["NAME", "MEMORY", "STATE"], [["a-long-name", 128, "Active"], ["b", 4096, None]], right=("MEMORY",))
    assert capsys.readouterr().out.splitlines() == [
        "NAME         MEMORY  STATE",
        "a-long-name     128  Active",
        "b              4096",
    ]


NOW = 1_700_000_100.0
NODE = {
    "NodeId": "node-1", "Device": "cuda:0", "Sandbox": "process",
    "Backbones": [{"model_path": "/models/tiny", "device": "cuda:0", "size_bytes": 600_000_000, "tensor_count": 9,
                   "load_s": 1.5, "load_gb_per_s": 0.4, "loaded_ts": NOW - 500}],
    "Instances": [
        {"instance_id": "i-busy", "function_name": "fb", "version": "$LATEST", "revision_id": "r", "state": "BUSY",
         "pid": 11, "started_ts": NOW - 50, "last_used_ts": NOW - 1, "invocations": 4},
        {"instance_id": "i-idle", "function_name": "fa", "version": "1", "revision_id": "r", "state": "IDLE",
         "pid": 12, "started_ts": NOW - 300, "last_used_ts": NOW - 65, "invocations": 2},
    ],
    "Gpu": {"device": "cuda:0", "name": "H200", "total_mb": 143000, "used_mb": 2000, "free_mb": 141000,
            "backbones_mb": 572, "adapters_mb": 0.5, "instances": {"i-busy": 700, "i-idle": 690}},
    "Pools": [{"name": "warm-pool", "sandbox": "process", "held": 2}],
    "AdapterTiers": [{"tier": "gpu", "adapters": 3}],
    "RecentInvocations": [{"request_id": "rid-1", "function_name": "fa", "version": "1", "status": "success",
                           "start_ts": NOW - 70, "duration_ms": 12.5, "init_duration_ms": None, "cold_start": True,
                           "ttft_ms": 3.25, "instance_id": "i-idle", "error_type": "", "cost_usd": "0.0000021"}],
}


def test_node_sections() -> None:
    assert header(NODE) == "node node-1  device cuda:0  sandbox process"
    assert gpu_line(NODE) == ("GPU H200: 2000 / 143000 MiB used (141000 free); backbones 572 MiB, "
                              "adapters 0.5 MiB")
    by_title = {s.title: s for s in sections(NODE, NOW)}
    assert by_title["Backbones"].rows == [["tiny", "cuda:0", "600.0", "1.50", "0.4"]]
    inst = by_title["Instances"]
    assert inst.headers[-1] == "GPU MIB"
    # per function, with idle time only for idle instances
    assert inst.rows == [["fa", "1", "i-idle", "IDLE", "1m05s", "2", "12", "690"],
                         ["fb", "$LATEST", "i-busy", "BUSY", "", "4", "11", "700"]]
    assert by_title["Pools"].rows == [["warm-pool", "process", "2"]]
    assert by_title["AdapterTiers"].headers == ("TIER", "ADAPTERS")  # a newer node's records, shown as they come
    (inv,) = by_title["Recent invocations"].rows
    assert inv[1:7] == ["fa:1", "cold", "success", "12.5", "3.2", "0.0000021"] and inv[7] == "rid-1"[:8]


def test_node_sections_on_cpu() -> None:
    cpu = {**NODE, "Gpu": None, "Pools": [], "RecentInvocations": []}
    del cpu["AdapterTiers"]
    assert gpu_line(cpu) is None
    by_title = {s.title: s for s in sections(cpu, NOW)}
    assert "GPU MIB" not in by_title["Instances"].headers and len(by_title["Instances"].rows[0]) == 7
    assert by_title["Pools"].rows == [] and by_title["Recent invocations"].rows == []
