"""``slfaas bench replay`` against a real server: three tiny functions deployed in one call, a
20-request slice of the bundled trace replayed through boto3's InvokeWithResponseStream, and
every per-request record checked against the server's own invocation records."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from slfaas.bench import ReplayOptions, WorkloadSpec, build_workload, deploy_functions, function_names, replay
from slfaas.cli.bench import bench
from tests.integration._util import node

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
TRACE = ROOT / "bench" / "data" / "AzureLLMInferenceTrace_conv.csv"


def _server_records(server) -> dict[str, dict]:  # type: ignore[no-untyped-def]
    """Straight from the API, not through the harness's own join."""
    return {r["request_id"]: r for r in server.api("GET", "/slfaas/v1/invocations?limit=1000")["Invocations"]}


def test_replay_records_match_the_servers(tiny_assets, live_server_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    server = live_server_factory("--keep-alive-s", "600")
    names = deploy_functions(server.url, function_names(3, "rp"), [tiny_assets.adapter_a, tiny_assets.adapter_b])
    workload = build_workload(WorkloadSpec(TRACE, 3, "zipf:1.0", tiny_assets.base, max_requests=20,
                                           max_prompt_tokens=48, max_output_tokens=6, function_prefix="rp"))
    assert len(workload.items) == 20 and workload.prompt_misses == 0
    # One request in flight at a time: each function cold-starts exactly once (keep-alive is
    # long), on its first request; everything queued behind a cold start is late and charged.
    result = replay(workload, ReplayOptions(server.url, speedup=20.0, slo_ms=60000.0, max_in_flight=1))
    records = result.records
    assert [r.index for r in records] == list(range(20)) and all(r.ok for r in records), records

    server_records = _server_records(server)
    assert {r.request_id for r in records} == set(server_records)      # the same invocations, no more
    seen: set[str] = set()
    for r in records:
        s = server_records[r.request_id]
        assert s["function_name"] == r.function and s["status"] == "success"
        assert r.cold_start is s["cold_start"] is (r.function not in seen)
        seen.add(r.function)
        # the harness's own numbers, met by the server: prompt built to the token, output exact
        assert s["prompt_tokens"] == r.prompt_tokens == workload.items[r.index].prompt_tokens
        assert s["completion_tokens"] == r.output_tokens == workload.items[r.index].request.output_tokens
        assert r.server_prompt_tokens == s["prompt_tokens"] and r.instance_id == s["instance_id"]
        assert r.scheduled_s == pytest.approx(workload.items[r.index].request.arrival_s / 20.0)
        assert r.scheduled_s <= r.sent_s <= r.first_byte_s <= r.end_s
        assert r.response_bytes > 0
    used = {r.function for r in records}
    instances = [i for i in node(server)["Instances"] if i["function_name"] in names]
    assert result.summary.cold_starts == len(used) == len(instances)
    assert result.summary.completed == 20 and result.summary.errors == 0
    assert result.summary.ttft_ms.count == 20 and result.summary.slo_attainment == 1.0
    # the request after a cold start waited for it, and its TTFT says so
    second = records[1]
    assert second.client_lag_ms > 0 and second.ttft_ms > (second.first_byte_s - second.sent_s) * 1000

    records_path, summary_path = result.write(tmp_path / "out")
    lines = records_path.read_text().splitlines()
    assert [json.loads(line)["request_id"] for line in lines] == [r.request_id for r in records]
    assert json.loads(summary_path.read_text())["summary"]["cold_starts"] == len(used)


def test_cli_deploys_and_replays(tiny_assets, live_server_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    server = live_server_factory("--keep-alive-s", "600")
    out_dir = tmp_path / "out"
    result = CliRunner().invoke(bench, [
        "replay", "--trace", str(TRACE), "--functions", "1", "--function-prefix", "cli", "--max-requests", "4",
        "--speedup", "50", "--max-prompt-tokens", "16", "--max-output-tokens", "3", "--endpoint", server.url,
        "--deploy-adapters", str(tiny_assets.adapter_a), "--out", str(out_dir), "--output", "json"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary["summary"]["completed"] == 4 and summary["workload"]["functions"] == ["cli-0"]
    lines = [json.loads(line) for line in (out_dir / "requests.jsonl").read_text().splitlines()]
    server_records = _server_records(server)
    assert {r["request_id"] for r in lines} == set(server_records)
    assert all(server_records[r["request_id"]]["completion_tokens"] == r["output_tokens"] == 3 for r in lines)
    assert sum(r["cold_start"] for r in lines) == summary["summary"]["cold_starts"] >= 1
