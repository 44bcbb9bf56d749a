"""Pre-warmed runtimes: a never-invoked function's first request is served by a runtime that
attached the backbone, built empty LoRA slots and warmed its kernels before the function existed;
its init is the adapter copy alone, and its outputs equal a fresh process's token for token."""
from __future__ import annotations

import json
import re

import pytest

from tests.conftest import TEST_SANDBOX, deploy
from tests.integration._util import invoke, node, request_id, wait_for

pytestmark = pytest.mark.slow
EVENT = {"prompt": "the quick brown fox", "max_tokens": 12, "temperature": 0, "return_tokens": True}


def _usage(server, rid: str) -> dict:  # type: ignore[no-untyped-def]
    (u,) = [u for u in server.api("GET", "/slfaas/v1/cost/usage")["Usage"] if u["request_id"] == rid]
    return u


def _prewarmed_ready(server) -> int:  # type: ignore[no-untyped-def]
    return sum(p["ready"] for p in node(server)["Pools"] if p["name"] == "prewarmed")


def test_first_invocation_of_a_new_function_is_served_by_a_prewarmed_runtime(tiny_assets, live_server_factory) -> None:  # type: ignore[no-untyped-def]
    server = live_server_factory("--keep-alive-s", "600", "--prewarm-min", "1")   # the server's default
    c = server.client()
    deploy(c, "first", tiny_assets.zip(tiny_assets.adapter_a), MemorySize=2048)   # makes the backbone resident
    wait_for(lambda: _prewarmed_ready(server) >= 1, 180, "a runtime pre-warmed for the backbone")
    [pool] = [p for p in node(server)["Pools"] if p["name"] == "prewarmed"]
    assert pool["base_model"] == str(tiny_assets.base.resolve()) and pool["device"] == "cpu"

    resp, body = invoke(c, "first", EVENT)
    assert "FunctionError" not in resp, body
    assert body["metrics"]["cold_start"] is True
    usage = _usage(server, request_id(resp))
    assert usage["preload_tier"] == "prewarmed" and usage["adapter_tier"] in ("disk", "host")
    phases = usage["init_phases_s"]
    assert phases["imports"] == 0 and phases["device_init"] == 0 and phases["backbone_attach"] == 0
    assert phases["adapter_load"] > 0
    report = [ln for ln in server.api("GET", "/slfaas/v1/functions/first/logs").splitlines()
              if f"REPORT RequestId: {request_id(resp)}" in ln]
    assert len(report) == 1 and "Preload Tier: prewarmed" in report[0]

    # the same adapter in a fresh process (nothing pre-warmed): the same tokens
    fresh = live_server_factory("--keep-alive-s", "600", "--prewarm-min", "0", data_dir=server.data_dir.parent / "fresh")
    fc = fresh.client()
    deploy(fc, "first", tiny_assets.zip(tiny_assets.adapter_a), MemorySize=2048)
    fresp, fbody = invoke(fc, "first", EVENT)
    assert "FunctionError" not in fresp, fbody
    assert _usage(fresh, request_id(fresp))["preload_tier"] == "cold"
    assert fbody["tokens"] == body["tokens"] and fbody["text"] == body["text"]
    # the taken runtime is replaced
    wait_for(lambda: _prewarmed_ready(server) >= 1, 180, "the pool's refill")
    assert json.loads(json.dumps(node(server)["Preload"]))["runtimes"][0][2] >= 1


PEEKER_HANDLER = '''
import os


def handler(event, context):
    fds = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            fds.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            pass
    maps = open("/proc/self/maps").read()
    return {"env": sorted(k for k in os.environ if "ACTIVITY" in k),
            "fds": [t for t in fds if "device-activity" in t],
            "maps": [ln for ln in maps.splitlines() if "device-activity" in ln]}
'''


def test_a_function_never_holds_the_device_activity_page(tiny_assets, live_server_factory) -> None:  # type: ignore[no-untyped-def]
    """Pre-warming pauses on the node's count of running invocations; the runtime lets go of
    that page before any function owns it (it would tell one tenant when others are served)."""
    server = live_server_factory("--keep-alive-s", "600", "--prewarm-min", "1")
    c = server.client()
    deploy(c, "first", tiny_assets.zip(tiny_assets.adapter_a), MemorySize=2048)   # makes the backbone resident
    wait_for(lambda: _prewarmed_ready(server) >= 1, 180, "a runtime pre-warmed for the backbone")
    deploy(c, "peeker", tiny_assets.zip(tiny_assets.adapter_b, extra={"handler.py": PEEKER_HANDLER}), MemorySize=2048)
    resp, body = invoke(c, "peeker", {})
    assert "FunctionError" not in resp, body
    assert _usage(server, request_id(resp))["preload_tier"] == "prewarmed"
    assert body == {"env": [], "fds": [], "maps": []}
    if TEST_SANDBOX == "process":   # only process runtimes read the page (containers do not get it yet)
        assert any(re.search(r"warm-pool .* ready .*paused for served requests", ln) for ln in list(server.output))
