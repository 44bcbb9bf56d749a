"""A live ``slfaas server --warm-pool 1`` (process sandboxes): a cold start is served by a
pre-started generic runtime process, billed and reported as the "pool" preload tier, and its
Init Duration is a fraction of a plain process cold start's; stopping the server ends the pool."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import TEST_SANDBOX, deploy
from tests.integration._util import instances_of, invoke, pid_alive, request_id, wait_for
from tests.procs import pool_runtimes

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(TEST_SANDBOX != "process", reason="the process backend's pool (docker: tests/docker)")]

EVENT = {"prompt": "hoist the sails", "max_tokens": 6, "temperature": 0}


def _report(server, name: str, rid: str) -> str:  # type: ignore[no-untyped-def]
    text = str(server.api("GET", f"/slfaas/v1/functions/{name}/logs"))
    (line,) = [ln for ln in text.splitlines() if f"REPORT RequestId: {rid}" in ln]
    return line


def _usage(server, rid: str) -> dict:  # type: ignore[no-untyped-def]
    (u,) = [u for u in server.api("GET", "/slfaas/v1/cost/usage")["Usage"] if u["request_id"] == rid]
    return u


def _ready(server) -> int:  # type: ignore[no-untyped-def]
    return sum(1 for line in list(server.output) if re.search(r"warm-pool process \w+ ready", line))


def test_cold_start_from_the_process_warm_pool(tiny_assets, live_server_factory):  # type: ignore[no-untyped-def]
    server = live_server_factory("--warm-pool", "1", "--log-level", "info", "--keep-alive-s", "600")
    c = server.client()
    deploy(c, "pooled", tiny_assets.zip(tiny_assets.adapter_a))
    # A variable read while torch imports, set differently from the node's: the pool runtime
    # imported without it, so this function cold-starts a fresh process (the comparison).
    deploy(c, "unpooled", tiny_assets.zip(tiny_assets.adapter_a),
           Environment={"Variables": {"TORCH_SLFAAS_TEST_NO_POOL": "1"}})
    wait_for(lambda: _ready(server) >= 1, 120, "the warm-pool process to import its libraries")
    assert server.api("GET", "/slfaas/v1/node")["Pools"] == [{"name": "warm-pool", "sandbox": "process", "held": 1,
                                                             "target": 1, "ready": 1}]

    resp, body = invoke(c, "pooled", EVENT)
    assert "FunctionError" not in resp, body
    assert body["metrics"]["cold_start"] is True
    rid = request_id(resp)
    (inst,) = instances_of(server, "pooled")
    assert any(f"instance {inst['instance_id']} from warm-pool process" in line for line in server.output)
    assert _usage(server, rid)["preload_tier"] == "pool"
    report = _report(server, "pooled", rid)
    assert "Preload Tier: pool" in report, report
    pool_init_ms = float(re.search(r"Init Duration: ([\d.]+) ms", report).group(1))  # type: ignore[union-attr]

    wait_for(lambda: _ready(server) >= 2, 120, "the pool to refill")  # no import competing for the CPU
    resp, cold_body = invoke(c, "unpooled", EVENT)
    assert "FunctionError" not in resp, cold_body
    cold_rid = request_id(resp)
    assert _usage(server, cold_rid)["preload_tier"] == "cold"
    cold_report = _report(server, "unpooled", cold_rid)
    assert "Preload Tier: cold" in cold_report, cold_report
    cold_init_ms = float(re.search(r"Init Duration: ([\d.]+) ms", cold_report).group(1))  # type: ignore[union-attr]
    assert cold_body["text"] == body["text"]  # same adapter, same greedy answer
    assert pool_init_ms < cold_init_ms / 2, (pool_init_ms, cold_init_ms)

    pool_pids = pool_runtimes(server.proc.pid)
    assert inst["pid"] in pool_pids and len(pool_pids) == 2  # the specialised one + the refill
    assert server.stop() == 0
    wait_for(lambda: not any(pid_alive(p) for p in pool_pids), 10, "the pool processes to exit")
