"""The comparison's outputs from given runs (no servers): the table's values and Markdown, the
JSON, the self-contained HTML report with its three plots, PNGs, and the node sampler."""
from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest

from slfaas.bench.errors import BenchError
from slfaas.bench.compare import Comparison, PolicyRun
from slfaas.bench.compare_html import render_html
from slfaas.bench.compare_report import to_json, write_comparison
from slfaas.bench.compare_table import markdown_table, row, savings
from slfaas.bench.policies import CommonSettings, ServerFeatures, make_policy
from slfaas.bench.records import RequestRecord
from slfaas.bench.run import ReplayOptions, ReplayResult
from slfaas.bench.sampler import NodeSample, NodeSampler
from slfaas.bench.summary import summarize
from slfaas.billing.policy_costs import PolicyCost
from slfaas.billing.records import UsageRecord

COMMON = CommonSettings(slo_ms=500.0)
WORKLOAD = {"spec": {"popularity": "zipf:1", "max_prompt_tokens": 32, "max_output_tokens": 4}, "source": "t<1>.csv",
            "functions": ["f-0", "f-1"], "requests": 3}


def _usage(rid: str, cold: bool, tier: str) -> UsageRecord:
    return UsageRecord(request_id=rid, function_name="f-0", version="$LATEST", node_id="n", device="cpu",
                       device_type="cpu", start_ts=0.0, end_ts=1.0, status="success", cold_start=cold,
                       preload_tier=tier, batch_size=1, batch_device_s=0.1, compute_device_s=0.1, init_device_s=0.0,
                       runtime_overhead_s=0.0, queue_s=0.0, tokens_in=1, tokens_out=1, memory_mb=1024,
                       cost_usd=Decimal("0.0001"))


def _run(name: str, ttfts: list[float], user: str, tiers: list[str]) -> PolicyRun:
    records = tuple(RequestRecord(index=i, function="f-0", scheduled_s=float(i), sent_s=float(i),
                                  first_byte_s=i + t / 1000, end_s=i + t / 1000 + 0.01, prompt_tokens=4,
                                  output_tokens=2, request_id=f"{name}-{i}", cold_start=bool(tiers[i] != "warm"),
                                  server_status="success", server_prompt_tokens=4, server_completion_tokens=2)
                    for i, t in enumerate(ttfts))
    result = ReplayResult(WORKLOAD, ReplayOptions("http://x", slo_ms=500.0), records, summarize(records, 500.0),
                          1000.0, 5.0)
    cost = PolicyCost("container", Decimal(user), 10.0, 5.0, Decimal("0.00002"), 3, 2, 5.0, "explained")
    samples = (NodeSample(999.5, 0, 0, 0, None, None, None), NodeSample(1001.0, 2, 1, 1, 30_000.0, 144_000.0, 27_000.0),
               NodeSample(1004.0, 1, 0, 0, 15_000.0, 144_000.0, 13_500.0))
    return PolicyRun(make_policy(name, COMMON, ServerFeatures()), result,
                     tuple(_usage(f"{name}-{i}", t != "warm", t) for i, t in enumerate(tiers)), (), (), samples,
                     1000.0, 1005.0, cost, "cpu", None, {"without_server_record": 0})


@pytest.fixture
def comparison() -> Comparison:
    return Comparison(WORKLOAD, COMMON, ServerFeatures(), (
        _run("serverlesslora", [100.0, 200.0, 300.0], "0.0001", ["prewarmed", "warm", "warm"]),
        _run("no-sharing", [4000.0, 5000.0, 9000.0], "0.0020", ["cold", "cold", "warm"]),
        _run("serverful", [20.0, 30.0, 40.0], "0.0050", ["warm", "warm", "warm"])), 999.0)


def test_rows_table_and_savings(comparison: Comparison) -> None:
    rows = [row(r) for r in comparison.runs]
    lora, nosh, full = rows
    assert lora["ttft_p50_ms"] == pytest.approx(200.0) and lora["slo_attainment"] == 1.0
    assert nosh["cold_starts"] == 2 and nosh["cold_starts_by_source"] == {"cold": 2}
    assert lora["cold_starts_by_source"] == {"prewarmed": 1} and full["policy"] == "serverful (incomplete)"
    table = markdown_table(rows)
    assert table.count("\n") == 5 and "| serverlesslora | 3 | 0 | 200.0 |" in table and "(cold 2)" in table
    got = savings(rows)
    assert got["no-sharing"]["ttft_p50"] == pytest.approx(1 - 200 / 5000)
    assert got["no-sharing"]["user_cost"] == pytest.approx(0.95) and got["serverful (incomplete)"]["user_cost"] == pytest.approx(0.98)


def test_json_html_and_pngs_are_written(comparison: Comparison, tmp_path: Path) -> None:
    data = to_json(comparison)
    assert json.loads(json.dumps(data, default=str))["runs"]["no-sharing"]["ttft_ms"] == pytest.approx([4000, 5000, 9000])
    html = render_html(data)
    assert html.count("<svg") == 3 and "t&lt;1&gt;.csv" in html and "<script" not in html
    assert "INCOMPLETE" in html and "serverlessllm" not in html and "no-sharing" in html
    assert "median 200 ms" in html    # the CDF's tooltip
    import re
    import xml.etree.ElementTree as ET
    for svg in re.findall(r"<svg.*?</svg>", html, re.S):   # each plot is well-formed SVG
        root = ET.fromstring(svg)
        assert root.tag.endswith("svg") and len(root) > 5
    paths = write_comparison(comparison, tmp_path)
    for key in ("json", "table", "html", "ttft_cdf_png", "cost_png", "timeline_png"):
        assert paths[key].is_file() and paths[key].stat().st_size > 0, key
    assert paths["ttft_cdf_png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "no-sharing" / "requests.jsonl").read_text().count("\n") == 3


def test_without_matplotlib_the_report_says_so_and_goes_on(comparison: Comparison, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real = builtins.__import__

    def no_matplotlib(name: str, *a, **k):  # type: ignore[no-untyped-def]
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real(name, *a, **k)
    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    paths = write_comparison(comparison, tmp_path)
    assert "ttft_cdf_png" not in paths and paths["html"].is_file()
    assert "matplotlib is not installed" in (tmp_path / "png_note.txt").read_text()


def test_node_samples_from_the_node_description() -> None:
    gpu = {"Instances": [{"state": "BUSY", "gpu_mb": 900}, {"state": "STARTING"}, {"state": "STOPPED"}],
           "Gpu": {"used_mb": 20_000, "total_mb": 144_000, "instances": {"a": 14_000, "b": 13_000}},
           "Pools": [{"held": 2}]}
    s = NodeSample.from_node(5.0, gpu)
    assert (s.instances, s.busy, s.starting, s.pooled) == (2, 1, 1, 2)
    assert (s.device_used_mb, s.device_total_mb, s.instances_device_mb) == (20_000.0, 144_000.0, 27_000.0)
    cpu = NodeSample.from_node(6.0, {"Instances": [{"state": "IDLE"}], "Gpu": None})
    assert (cpu.instances, cpu.device_used_mb, cpu.instances_device_mb) == (1, None, None)


def test_the_sampler_skips_a_failed_read_and_samples_at_the_end() -> None:
    calls = []

    def read() -> dict:
        calls.append(1)
        if len(calls) == 1:
            raise OSError("connection refused")
        return {"Instances": []}
    sampler = NodeSampler("http://unused", 0.01, read=read)
    with sampler:
        while len(calls) < 4:
            sampler._stop.wait(0.01)
    assert len(sampler.samples) == len(calls) - 1 >= 3
    with pytest.raises(ValueError, match="interval"):
        NodeSampler("http://unused", 0)


def test_runs_split_over_two_commands_are_reported_together(comparison: Comparison, tmp_path: Path) -> None:
    from dataclasses import replace

    first = replace(comparison, runs=comparison.runs[1:])      # no-sharing, serverful
    second = replace(comparison, runs=comparison.runs[:1])     # serverlesslora
    write_comparison(first, tmp_path)
    paths = write_comparison(second, tmp_path, merge_existing=True)
    data = json.loads(paths["json"].read_text())
    assert [p["name"] for p in data["policies"]] == ["serverlesslora", "no-sharing", "serverful"]
    assert [r["policy"] for r in data["rows"]] == ["serverlesslora", "no-sharing", "serverful (incomplete)"]
    assert set(data["runs"]) == {"serverlesslora", "no-sharing", "serverful"}
    assert data["savings_of_serverlesslora"]["no-sharing"]["user_cost"] == pytest.approx(0.95)
    assert render_html(data).count("serverlesslora") >= 3
    other = replace(second, common=CommonSettings(slo_ms=900.0))
    with pytest.raises(Exception, match="different common"):
        write_comparison(other, tmp_path, merge_existing=True)


def test_the_cobatched_configuration_gets_its_own_savings_when_it_ran(comparison: Comparison, tmp_path: Path) -> None:
    from dataclasses import replace

    assert set(k for k in to_json(comparison) if k.startswith("savings_of_")) == {"savings_of_serverlesslora"}
    cob = _run("serverlesslora-cobatched", [50.0, 60.0, 70.0], "0.00005", ["cold", "warm", "warm"])
    assert not cob.policy.complete   # on a server without shared execution: no savings of its own
    assert "savings_of_serverlesslora-cobatched" not in to_json(replace(comparison, runs=(*comparison.runs, cob)))
    cob = replace(cob, policy=make_policy(cob.policy.name, COMMON, ServerFeatures(shared_execution=True)))
    write_comparison(comparison, tmp_path)
    data = json.loads(write_comparison(replace(comparison, runs=(cob,)), tmp_path, merge_existing=True)["json"].read_text())
    assert [r["policy"] for r in data["rows"]][-1] == "serverlesslora-cobatched"
    mine = data["savings_of_serverlesslora-cobatched"]
    assert mine["no-sharing"]["user_cost"] == pytest.approx(1 - 0.00005 / 0.0020)
    assert mine["serverlesslora"]["ttft_p50"] == pytest.approx(1 - 60 / 200)
    assert data["savings_of_serverlesslora"]["serverlesslora-cobatched"]["user_cost"] == pytest.approx(1 - 0.0001 / 0.00005)


def test_a_merge_is_checked_before_the_runs_and_names_what_differs(comparison: Comparison, tmp_path: Path) -> None:
    from dataclasses import asdict, replace

    from slfaas.bench.compare_report import check_mergeable

    check_mergeable(tmp_path, comparison.workload, comparison.common)      # nothing there yet: fine
    write_comparison(comparison, tmp_path)
    check_mergeable(tmp_path, comparison.workload, comparison.common)
    with pytest.raises(BenchError, match=r"different common \(keep_alive_s, slo_ms\)"):
        check_mergeable(tmp_path, comparison.workload, replace(comparison.common, slo_ms=1.0, keep_alive_s=1.0))
    with pytest.raises(BenchError, match=r"different workload \(requests\)"):
        check_mergeable(tmp_path, {**comparison.workload, "requests": 999}, comparison.common)
    # a comparison written before containers were billed through keep-alive: it billed them to
    # the window's end, so only a --window-only run merges with it
    path = tmp_path / "comparison.json"
    older = json.loads(path.read_text())
    del older["common"]["bill_keep_alive"]
    path.write_text(json.dumps(older))
    with pytest.raises(BenchError, match=r"different common \(bill_keep_alive\)"):
        check_mergeable(tmp_path, comparison.workload, comparison.common)
    window_only = replace(comparison.common, bill_keep_alive=False)
    check_mergeable(tmp_path, comparison.workload, window_only)
    merged = write_comparison(replace(comparison, common=window_only), tmp_path, merge_existing=True)
    assert json.loads(merged["json"].read_text())["common"] == json.loads(json.dumps(asdict(window_only)))
    path.write_text("{not json")
    with pytest.raises(BenchError, match="cannot be read as a comparison"):
        check_mergeable(tmp_path, comparison.workload, comparison.common)
