"""``--devices cpu,cpu``: two nodes in the server process behind one endpoint, with real process
sandboxes and runtimes: a backbone on each, instances spread by placement, warm reuse, one
account of usage, merged logs and the per-node view."""
from __future__ import annotations

import os
import subprocess
import sys
from decimal import Decimal

import pytest

from tests.conftest import ROOT, deploy
from tests.integration._util import invoke, node, request_id

pytestmark = pytest.mark.slow

EVENT = {"prompt": "two nodes", "max_tokens": 4, "temperature": 0}


def test_two_cpu_nodes_behind_one_endpoint(tiny_assets, live_server_factory) -> None:  # type: ignore[no-untyped-def]
    # the histogram keep-alive falls back to the 600 s TTL until it has a history
    server = live_server_factory("--devices", "cpu,cpu", "--max-instances", "2", "--keep-alive-s", "600",
                                 "--keep-alive-policy", "histogram")
    c = server.client()
    report = node(server)
    assert report["Device"] == "cpu,cpu" and report["MaxInstances"] == 4
    assert [n["State"] for n in report["Nodes"]] == ["alive", "alive"]
    assert [n["KeepAlivePolicy"] for n in report["Nodes"]] == ["histogram", "histogram"]   # every node's
    node_ids = [n["NodeId"] for n in report["Nodes"]]

    names = ["dev-a", "dev-b", "dev-c"]
    for name, adapter in zip(names, (tiny_assets.adapter_a, tiny_assets.adapter_b, tiny_assets.adapter_a)):
        deploy(c, name, tiny_assets.zip(adapter), MemorySize=1024)
    # prepared on every node: one backbone copy each
    assert [len(n["Backbones"]) for n in node(server)["Nodes"]] == [1, 1]

    first: dict[str, str] = {}
    for name in names:
        resp, body = invoke(c, name, EVENT)
        assert "FunctionError" not in resp, body
        first[name] = request_id(resp)
    instances = {i["function_name"]: i for i in node(server)["Instances"]}
    where = {name: instances[name]["node_id"] for name in names}
    assert where == {"dev-a": node_ids[0], "dev-b": node_ids[1], "dev-c": node_ids[0]}   # fewer instances first

    resp, body = invoke(c, "dev-a", EVENT)     # warm: the same instance, on its node
    assert "FunctionError" not in resp and body["metrics"]["cold_start"] is False
    record = server.api("GET", f"/slfaas/v1/invocations/{request_id(resp)}")
    assert record["instance_id"] == instances["dev-a"]["instance_id"]

    # billing: every record names its node, the report adds them all, both nodes' usage is live
    usage = server.api("GET", "/slfaas/v1/cost/usage")["Usage"]
    assert {u["node_id"] for u in usage} == set(node_ids)
    assert {u["request_id"]: u["node_id"] for u in usage if u["request_id"] in first.values()} == \
        {first[n]: where[n] for n in names}
    rep = server.api("GET", "/slfaas/v1/cost/report?format=json")
    assert Decimal(rep["total"]["cost_usd"]) == sum((Decimal(u["cost_usd"]) for u in usage), Decimal(0))
    assert {n["node_id"] for n in server.api("GET", "/slfaas/v1/cost/nodes")["Nodes"]} >= set(node_ids)

    # logs of a function whose instances could be anywhere: its START/REPORT lines are there
    text = server.api("GET", "/slfaas/v1/functions/dev-b/logs")
    assert f"START RequestId: {first['dev-b']}" in text and f"REPORT RequestId: {first['dev-b']}" in text

    status = subprocess.run([sys.executable, "-m", "slfaas.cli.main", "node", "status", "--endpoint", server.url],
                            capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert status.returncode == 0, status.stderr
    assert "2 of 2 nodes alive" in status.stdout and all(n in status.stdout for n in node_ids)


def test_bad_devices_are_refused_with_one_line(tmp_path) -> None:  # type: ignore[no-untyped-def]
    for devices, message in (("cuda:0,cuda:0", "GPU twice"), ("cpu,,cpu", "comma-separated"),
                             ("cpu,tpu", "must be cpu, cuda")):
        out = subprocess.run([sys.executable, "-m", "slfaas.cli.main", "server", "--port", "0", "--data-dir",
                              str(tmp_path / "d"), "--devices", devices], capture_output=True, text=True, cwd=ROOT,
                             timeout=120)
        assert out.returncode != 0 and message in out.stderr and "Traceback" not in out.stderr, (devices, out.stderr)
    for extra, message in ((["--cluster", "rayx"], "--cluster must be ray or ray://"),
                           (["--cluster", "ray", "--devices", "cpu,cpu"], "do not go together"),
                           (["--cluster", "ray"], "Ray")):   # no cluster here: cannot join it (or no Ray)
        out = subprocess.run([sys.executable, "-m", "slfaas.cli.main", "server", "--port", "0", "--data-dir",
                              str(tmp_path / "d"), *extra], capture_output=True, text=True, cwd=ROOT, timeout=120,
                             env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"})
        assert out.returncode != 0 and message in out.stderr and "Traceback" not in out.stderr, (extra, out.stderr)
    both = subprocess.run([sys.executable, "-m", "slfaas.cli.main", "server", "--port", "0", "--data-dir",
                           str(tmp_path / "d"), "--devices", "cpu", "--device", "cpu"], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert both.returncode != 0 and "not both" in both.stderr
