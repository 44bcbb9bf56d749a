"""Acceptance 4, 5 and 8: one instance failing (a write into the read-only backbone, a SIGKILL
mid-invocation, a timeout) fails only its own invocation, as a FunctionError; the server, the
shared backbone and other functions' instances are untouched, and the failed function's next
invocation gets a fresh instance."""
from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from tests.conftest import deploy
from tests.integration._util import (CRASHER_HANDLER, SLEEPER_HANDLER, assert_healthy, instances_of,
                                     invocation_record, invoke, node, pid_alive, request_id, wait_for)

EVENT = {"prompt": "the treasure is over the sea", "max_tokens": 16, "temperature": 0}


@pytest.fixture(scope="module")
def client(module_server):  # type: ignore[no-untyped-def]
    return module_server.client()


def _backbone_sha(server) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {b["model_path"]: b["sha256"] for b in node(server, checksums=True)["Backbones"]}


def test_write_into_backbone_crashes_only_that_instance(tiny_assets, module_server,  # type: ignore[no-untyped-def]
                                                        client):
    deploy(client, "steady", tiny_assets.zip(tiny_assets.adapter_b))
    deploy(client, "crasher", tiny_assets.zip(tiny_assets.adapter_a, extra={"handler.py": CRASHER_HANDLER}))
    _, steady_before = invoke(client, "steady", EVENT)
    steady_pid = instances_of(module_server, "steady")[0]["pid"]
    sha_before = _backbone_sha(module_server)
    assert sha_before and all(len(v) == 64 for v in sha_before.values())

    resp, body = invoke(client, "crasher", {"write_backbone": True})
    assert resp["StatusCode"] == 200
    assert resp.get("FunctionError"), body
    assert "SIGSEGV" in body["errorMessage"], body
    assert "wrote" not in body
    rec = invocation_record(module_server, request_id(resp))
    assert rec["status"] == "function_error" and "SIGSEGV" in rec["error_message"]
    crashed_iid = rec["instance_id"]
    assert crashed_iid
    wait_for(lambda: instances_of(module_server, "crasher") == [], 10, "crashed instance to be gone")

    # Nothing else noticed.
    assert_healthy(module_server)
    assert _backbone_sha(module_server) == sha_before
    r2, steady_after = invoke(client, "steady", EVENT)
    assert "FunctionError" not in r2
    assert steady_after["text"] == steady_before["text"]
    assert steady_after["usage"] == steady_before["usage"]
    assert steady_after["metrics"]["cold_start"] is False
    assert instances_of(module_server, "steady")[0]["pid"] == steady_pid

    # The crashing function's next invocation gets a fresh instance, and still works.
    r3, again = invoke(client, "crasher", EVENT)
    assert "FunctionError" not in r3, again
    assert again["metrics"]["cold_start"] is True
    rec3 = invocation_record(module_server, request_id(r3))
    assert rec3["cold_start"] is True and rec3["instance_id"] != crashed_iid
    assert pid_alive(instances_of(module_server, "crasher")[0]["pid"])


def test_sigkill_mid_invocation_is_a_function_error(tiny_assets, module_server, client):  # type: ignore[no-untyped-def]
    deploy(client, "sleeper", tiny_assets.zip(tiny_assets.adapter_a, extra={"handler.py": SLEEPER_HANDLER}),
           Timeout=120)
    outcome: dict = {}

    def call() -> None:
        c = module_server.client()
        t0 = time.monotonic()
        try:
            outcome["resp"], outcome["body"] = invoke(c, "sleeper", {"sleep": 30})
        except Exception as exc:  # reported through outcome, asserted below
            outcome["exc"] = exc
        outcome["elapsed"] = time.monotonic() - t0

    worker = threading.Thread(target=call, daemon=True)
    worker.start()

    def busy_instance() -> dict | None:
        return next((i for i in instances_of(module_server, "sleeper") if i["state"] == "BUSY" and i["pid"]), None)

    inst = wait_for(busy_instance, 60, "the sleeper's instance to be BUSY")
    # ... and the handler to be inside its sleep (the marker it prints), so the kill is mid-invocation.
    wait_for(lambda: "sleeper-start" in module_server.api("GET", "/slfaas/v1/functions/sleeper/logs"),
             60, "the handler to start")
    killed_ts = time.monotonic()
    os.kill(inst["pid"], signal.SIGKILL)
    worker.join(20)
    assert not worker.is_alive(), "invocation hung after its instance was killed"
    assert time.monotonic() - killed_ts < 15
    assert "exc" not in outcome, outcome.get("exc")
    resp, body = outcome["resp"], outcome["body"]
    assert resp["StatusCode"] == 200
    assert resp.get("FunctionError"), body
    assert "SIGKILL" in body["errorMessage"], body
    assert outcome["elapsed"] < 30
    rec = invocation_record(module_server, request_id(resp))
    assert rec["status"] == "function_error"
    assert rec["instance_id"] == inst["instance_id"]

    assert_healthy(module_server)
    assert all(i["instance_id"] != inst["instance_id"] for i in node(module_server)["Instances"])
    r2, body2 = invoke(client, "sleeper", {"sleep": 0})
    assert "FunctionError" not in r2, body2
    assert body2["pid"] != inst["pid"]
    rec2 = invocation_record(module_server, request_id(r2))
    assert rec2["cold_start"] is True and rec2["status"] == "success"
    assert rec2["instance_id"] != inst["instance_id"]


def test_timeout_is_task_timed_out(tiny_assets, module_server, client):  # type: ignore[no-untyped-def]
    deploy(client, "short", tiny_assets.zip(tiny_assets.adapter_b, extra={"handler.py": SLEEPER_HANDLER}),
           Timeout=2)
    # A cold start: its init is bounded by the node's init timeout, not by the function's Timeout.
    t0 = time.monotonic()
    resp, body = invoke(client, "short", {"sleep": 10})
    elapsed = time.monotonic() - t0
    assert resp.get("FunctionError"), body
    assert "Task timed out" in body["errorMessage"], body
    rec = invocation_record(module_server, request_id(resp))
    assert rec["status"] == "function_error"
    assert 1900 <= rec["duration_ms"] < 8000  # the handler ran ~2 s, not its 10 s
    assert elapsed < 10 + (rec["init_duration_ms"] or 0) / 1000
    # The timed-out instance is killed: a late answer can never leak into another invocation.
    wait_for(lambda: instances_of(module_server, "short") == [], 10, "timed-out instance to be stopped")

    r2, b2 = invoke(client, "short", {"sleep": 0.2})
    assert "FunctionError" not in r2, b2
    assert b2["slept"] == 0.2
    rec2 = invocation_record(module_server, request_id(r2))
    assert rec2["cold_start"] is True and rec2["instance_id"] != rec["instance_id"]
    assert_healthy(module_server)
