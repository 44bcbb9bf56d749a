"""Acceptance 6: invocation records (request id, function, version, start/end, cold/warm,
durations) are stored, survive a clean server stop (SIGTERM: exit 0, no instance left running)
and a restart on the same data dir (and registry: SQLite, or PostgreSQL with --database-url);
the function survives too and still answers."""
from __future__ import annotations

from tests.conftest import deploy
from tests.integration._util import instances_of, invocations_of, invoke, pid_alive, request_id, wait_for

EVENT = {"prompt": "hoist the sails", "max_tokens": 10, "temperature": 0}


def test_records_and_functions_survive_restart(tiny_assets, live_server_factory,  # type: ignore[no-untyped-def]
                                               tmp_path, registry_flags):
    data_dir = tmp_path / "persist"
    first = live_server_factory(*registry_flags, data_dir=data_dir)
    c = first.client()
    cfg = deploy(c, "keeper", tiny_assets.zip(tiny_assets.adapter_a), Description="kept across restarts")
    r_cold, b_cold = invoke(c, "keeper", EVENT)
    r_warm, b_warm = invoke(c, "keeper", EVENT)
    assert "FunctionError" not in r_cold and "FunctionError" not in r_warm
    assert b_cold["text"] == b_warm["text"]
    ids = {"cold": request_id(r_cold), "warm": request_id(r_warm)}
    pids = [i["pid"] for i in instances_of(first, "keeper")]
    assert len(pids) == 1 and pid_alive(pids[0])

    assert first.stop() == 0  # SIGTERM
    assert "slfaas server stopped" in "".join(first.output)
    wait_for(lambda: not any(pid_alive(p) for p in pids), 5, "instance processes to be gone after stop")

    second = live_server_factory(*registry_flags, data_dir=data_dir)
    assert second.url and second.alive()
    records = {r["request_id"]: r for r in invocations_of(second, "keeper")}
    assert set(records) == set(ids.values())
    cold, warm = records[ids["cold"]], records[ids["warm"]]
    for rec in (cold, warm):
        assert rec["function_name"] == "keeper"
        assert rec["version"] == "$LATEST"
        assert rec["status"] == "success"
        assert rec["start_ts"] < rec["end_ts"]
        assert rec["duration_ms"] > 0
        assert rec["completion_tokens"] == b_cold["usage"]["completion_tokens"]
        assert rec["prompt_tokens"] == b_cold["usage"]["prompt_tokens"]
        assert rec["instance_id"]
    assert cold["cold_start"] is True and warm["cold_start"] is False
    assert cold["init_duration_ms"] is not None and cold["init_duration_ms"] > 0
    assert warm["init_duration_ms"] is None
    assert cold["instance_id"] == warm["instance_id"]  # the warm one reused the instance
    assert cold["end_ts"] <= warm["start_ts"]
    # The wall clock agrees with the recorded duration.
    assert warm["duration_ms"] <= (warm["end_ts"] - warm["start_ts"]) * 1000 + 1

    c2 = second.client()
    cfg2 = c2.get_function_configuration(FunctionName="keeper")
    for key in ("FunctionName", "CodeSha256", "RevisionId", "Description", "Timeout", "MemorySize"):
        assert cfg2[key] == cfg[key], key
    assert cfg2["State"] == "Active"
    r3, b3 = invoke(c2, "keeper", EVENT)
    assert "FunctionError" not in r3, b3
    assert b3["text"] == b_cold["text"]
    assert b3["metrics"]["cold_start"] is True  # a new node starts a new instance
    after = {r["request_id"]: r for r in invocations_of(second, "keeper")}
    assert set(after) == set(ids.values()) | {request_id(r3)}
    assert after[request_id(r3)]["status"] == "success"
