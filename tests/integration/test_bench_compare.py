"""``slfaas bench compare`` end to end on CPU: the four policies, each on a fresh server started
by the harness, replay the same slice of a tiny model's functions.

The slice is short and shaped so that the policies' difference shows whatever the machine's
speed: one request, then, after a pause longer than a pre-warmed cold start, three at once to
the same function. slfaas serves the first from a pre-warmed runtime and batches the burst on
that instance (one cold start); without sharing (one request at a time, a private backbone
loaded per instance) the burst needs an instance per request. Each run's records are checked
against the server's own invocation records, read from its registry after it stopped."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from slfaas.cli.bench import bench
from slfaas.faas.registry import Registry

pytestmark = pytest.mark.slow

SLICE = """TIMESTAMP,ContextTokens,GeneratedTokens
2023-11-16 18:15:46.000,374,44
2023-11-16 18:15:54.000,396,109
2023-11-16 18:15:54.000,879,55
2023-11-16 18:15:54.000,91,16
"""


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny base whose weight files an isolated instance may read (it loads its own backbone
    in the no-sharing policy), and an adapter for it."""
    from slfaas.testing.tinymodels import make_adapter, make_base_model

    root = tmp_path_factory.mktemp("compare-model")
    base = make_base_model(root / "base")
    for f in base.iterdir():
        os.chmod(f, 0o644)
    return base, make_adapter(base, root / "adapter", seed=1, base_model_name=str(base))


def test_four_policies_on_one_slice(model: tuple[Path, Path], tmp_path: Path) -> None:
    base, adapter = model
    trace = tmp_path / "slice.csv"
    trace.write_text(SLICE)
    out, work = tmp_path / "out", tmp_path / "work"
    result = CliRunner().invoke(bench, [
        "compare", "--trace", str(trace), "--functions", "1", "--adapters", str(adapter), "--speedup", "1",
        "--max-prompt-tokens", "24", "--max-output-tokens", "12", "--slo-ms", "60000", "--keep-alive-s", "30",
        "--max-instances", "4", "--memory-mb", "1024", "--max-batch-size", "8", "--sample-interval-s", "0.25",
        "--work-dir", str(work), "--out", str(out), "-o", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads((out / "comparison.json").read_text())
    rows = {r["policy"].split(" ")[0]: r for r in data["rows"]}
    assert set(rows) == {"serverlesslora", "no-sharing", "serverlessllm-like", "serverful"}
    for name, r in rows.items():
        assert r["completed"] == 4 and r["errors"] == 0, (name, r)
        assert r["checks"] == {"without_server_record": 0, "without_usage_record": 0, "token_mismatches": 0}
    # the same settings for every policy, written into the results
    assert data["common"]["keep_alive_s"] == 30 and data["common"]["max_instances"] == 4
    assert data["common"]["bill_keep_alive"]
    assert data["workload"]["requests"] == 4 and data["workload"]["functions"] == ["replay-0"]

    lora, nosh = rows["serverlesslora"], rows["no-sharing"]
    assert lora["cold_starts"] == 1 and lora["cold_starts_by_source"] == {"prewarmed": 1}
    assert nosh["cold_starts"] >= 3 > lora["cold_starts"] and set(nosh["cold_starts_by_source"]) == {"cold"}
    assert float(lora["user_usd"]) < float(nosh["user_usd"])
    assert lora["ttft_p50_ms"] < nosh["ttft_p50_ms"]    # its burst ran warm, no-sharing's mostly cold
    assert rows["serverful"]["cold_starts"] == 0 and rows["serverful"]["billing"] == "whole-device"
    assert nosh["billing"] == rows["serverlessllm-like"]["billing"] == "container" and lora["billing"] == "per-request"
    for name in ("no-sharing", "serverlessllm-like"):   # billed through their keep-alive: the harness waited
        run = data["runs"][name]
        assert run["cost"]["after_window_device_s"] > 0, run["cost"]
        ended = [i["end_ts"] for i in run["instances"]]
        assert None not in ended and max(ended) > run["window"]["until_ts"], run["instances"]
    for name in rows:
        assert data["runs"][name]["samples"], name          # the timeline was sampled
    modes = {p["name"]: p["server_args"] for p in data["policies"]}
    assert "private-checkpoint" in modes["no-sharing"] and "private-host-cache" in modes["serverlessllm-like"]

    for name in rows:    # per-request records against the server's own, from its registry
        records = [json.loads(line) for line in (out / name / "requests.jsonl").read_text().splitlines()]
        registry = Registry.for_data_dir(work / name)
        try:
            server = {i.request_id: i for i in registry.list_invocations("replay-0", 1000)}
        finally:
            registry.close()
        assert {r["request_id"] for r in records} <= set(server)
        assert len(server) == 4 + (1 if name == "serverful" else 0)   # serverful: its provisioning request
        for r in records:
            s = server[r["request_id"]]
            assert s.status == "success" and s.cold_start is r["cold_start"]
            assert (s.prompt_tokens, s.completion_tokens) == (r["prompt_tokens"], r["output_tokens"])
            assert s.instance_id == r["instance_id"]
        assert sum(r["cold_start"] for r in records) == rows[name]["cold_starts"]
    html = (out / "report.html").read_text()
    assert html.count("<svg") == 3 and all(n in html for n in rows)
    assert (out / "ttft_cdf.png").is_file() and (out / "timeline.png").is_file()


def test_cobatched_configuration_serves_the_slice_in_the_shared_runtime(model: tuple[Path, Path],
                                                                          tmp_path: Path) -> None:
    """slfaas with its functions opted in to shared execution: the shared runtime, started
    before the window, serves the whole slice warm; billed per request, records match."""
    base, adapter = model
    trace = tmp_path / "slice.csv"
    trace.write_text(SLICE)
    out, work = tmp_path / "out", tmp_path / "work"
    result = CliRunner().invoke(bench, [
        "compare", "--policies", "serverlesslora-cobatched", "--trace", str(trace), "--functions", "1",
        "--adapters", str(adapter), "--max-prompt-tokens", "24", "--max-output-tokens", "12", "--slo-ms", "60000",
        "--keep-alive-s", "30", "--max-instances", "4", "--memory-mb", "1024", "--max-batch-size", "8",
        "--work-dir", str(work), "--out", str(out), "-o", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads((out / "comparison.json").read_text())
    (r,) = data["rows"]
    assert r["policy"] == "serverlesslora-cobatched" and r["billing"] == "per-request"
    assert r["completed"] == 4 and r["errors"] == 0 and r["cold_starts"] == 0, r
    assert r["checks"] == {"without_server_record": 0, "without_usage_record": 0, "token_mismatches": 0}
    assert data["policies"][0]["function_env"]["SLFAAS_SHARED_EXECUTION"] == "1"
    assert "savings_of_serverlesslora-cobatched" in data
    records = [json.loads(line) for line in (out / "serverlesslora-cobatched" / "requests.jsonl").read_text().splitlines()]
    assert all(rec["instance_id"].startswith("slfaas-shared-") for rec in records), records
