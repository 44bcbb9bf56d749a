"""Acceptance 7: with ``--keep-alive-s 2`` an idle instance is stopped (its process gone) within
seconds, and the next invocation is a cold start again."""
from __future__ import annotations

import time

from tests.conftest import deploy
from tests.integration._util import instances_of, invocation_record, invoke, pid_alive, request_id, wait_for

EVENT = {"prompt": "dear sir", "max_tokens": 6, "temperature": 0}


def test_idle_instance_expires(tiny_assets, live_server_factory):  # type: ignore[no-untyped-def]
    server = live_server_factory("--keep-alive-s", "2")
    c = server.client()
    deploy(c, "brief", tiny_assets.zip(tiny_assets.adapter_b))

    r1, b1 = invoke(c, "brief", EVENT)
    assert "FunctionError" not in r1, b1
    assert b1["metrics"]["cold_start"] is True
    listed = instances_of(server, "brief")
    assert len(listed) == 1 and listed[0]["pid"] and pid_alive(listed[0]["pid"])
    pid, iid, last_used = listed[0]["pid"], listed[0]["instance_id"], listed[0]["last_used_ts"]

    wait_for(lambda: instances_of(server, "brief") == [], 10, "the idle instance to be reaped")
    assert time.time() >= last_used + 2  # kept alive for its keep-alive first, not stopped at once
    wait_for(lambda: not pid_alive(pid), 5, "the reaped instance's process to exit")

    r2, b2 = invoke(c, "brief", EVENT)
    assert "FunctionError" not in r2, b2
    assert b2["metrics"]["cold_start"] is True
    assert b2["text"] == b1["text"]
    rec = invocation_record(server, request_id(r2))
    assert rec["cold_start"] is True and rec["instance_id"] != iid
