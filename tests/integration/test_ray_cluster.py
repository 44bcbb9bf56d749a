"""``slfaas server --cluster ray`` on a local multi-node Ray cluster built here: node agents as
Ray actors on two nodes, functions spread over them by placement, one agent killed in the
middle of a burst (its invocations end as function errors with records, an Event is retried
on the other node, nothing answers 5xx), a third node that joins later takes new work, and one
cost report over every node."""
from __future__ import annotations

import json
import os
import threading
import time
from decimal import Decimal

import pytest

from tests.conftest import ROOT, deploy
from tests.integration._util import invocation_record, node, wait_for

pytestmark = pytest.mark.slow

if os.environ.get("CI") == "true":
    import ray   # CI installs the test extra, Ray included: never skipped there
else:
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'slfaas[ray]')")

HANDLER = '''
import time


def handler(event, context):
    if "sleep" in event:
        print(f"sleeper-start {context.aws_request_id}", flush=True)
        time.sleep(event["sleep"])
        return {"slept": event["sleep"]}
    return context.generate_event(event)
'''
EVENT = {"prompt": "across the cluster", "max_tokens": 4, "temperature": 0}
NAMES = [f"ray-f{i}" for i in range(6)]


@pytest.fixture
def ray_cluster(monkeypatch):  # type: ignore[no-untyped-def]
    """A head node that runs no agent and two worker nodes, each advertising ``slfaas_node`` and
    its own resource (``node_a``, ``node_b``); one CPU each, the least Ray needs."""
    from ray.cluster_utils import Cluster

    monkeypatch.setenv("PYTHONPATH", str(ROOT))    # Ray's workers import this checkout's slfaas
    cluster = Cluster(initialize_head=True, connect=False,
                      head_node_args={"num_cpus": 0, "include_dashboard": False})
    try:
        for label in ("a", "b"):
            cluster.add_node(num_cpus=1, resources={"slfaas_node": 1, f"node_{label}": 1})
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, namespace="slfaas", logging_level="WARNING")
        monkeypatch.setenv("RAY_ADDRESS", cluster.address)
        yield cluster
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()


def _ray_node(resource: str) -> str:
    return next(n["NodeID"] for n in ray.nodes() if n["Alive"] and resource in n["Resources"])


def _agent_node(report: dict, ray_node_id: str) -> str:
    return next(n["NodeId"] for n in report["Nodes"] if n["Host"].endswith("/" + ray_node_id[:12]))


def test_agents_on_a_ray_cluster_spread_survive_a_lost_node_and_use_a_new_one(  # type: ignore[no-untyped-def]
        tiny_assets, ray_cluster, live_server_factory, monkeypatch, tmp_path):
    from slfaas.gpu_node.ray.nodes import agent_name

    monkeypatch.setenv("SLFAAS_EVENT_RETRY_DELAYS_S", "1,1")
    server = live_server_factory("--cluster", "ray", "--ray-resource", "slfaas_node", "--max-instances", "6",
                                 "--keep-alive-s", "600", "--node-data-dir", str(tmp_path / "agents"))
    c = server.client()
    ray_a, ray_b = _ray_node("node_a"), _ray_node("node_b")
    report = node(server)
    node_a, node_b = _agent_node(report, ray_a), _agent_node(report, ray_b)
    assert report["Device"] == "cpu,cpu" and {n["State"] for n in report["Nodes"]} == {"alive"}

    for i, name in enumerate(NAMES):
        adapter = tiny_assets.adapter_a if i % 2 == 0 else tiny_assets.adapter_b
        deploy(c, name, tiny_assets.zip(adapter, {"handler.py": HANDLER}), MemorySize=1024)
    assert [len(n["Backbones"]) for n in node(server)["Nodes"]] == [1, 1]   # prepared on both nodes
    for name in NAMES:   # cold starts, one after another: each goes where fewer instances run
        resp = c.invoke(FunctionName=name, Payload=json.dumps(EVENT))
        assert resp["StatusCode"] == 200 and "FunctionError" not in resp, resp["Payload"].read()
        assert json.loads(resp["Payload"].read())["usage"]["completion_tokens"] > 0
    where = {i["function_name"]: i["node_id"] for i in node(server)["Instances"]}
    assert sorted(where.values()) == sorted([node_a] * 3 + [node_b] * 3)
    on_a = [n for n in NAMES if where[n] == node_a]
    on_b = [n for n in NAMES if where[n] == node_b]

    # integrity checks run on every node and come back to the registry; logs come back merged
    checks = server.api("POST", "/slfaas/v1/node/verify")["Checks"]
    assert len(checks) == 2 and all(c["ok"] for c in checks)
    wait_for(lambda: len(server.api("GET", "/slfaas/v1/node/integrity")["Events"]) >= 2, 30,
             "the nodes' integrity checks to reach the registry")
    text = server.api("GET", f"/slfaas/v1/functions/{on_b[0]}/logs")
    assert "START RequestId:" in text and "REPORT RequestId:" in text and "Billed Device Seconds:" in text

    # streaming crosses Ray as chunks, then the end
    stream = c.invoke_with_response_stream(FunctionName=on_b[0], Payload=json.dumps(EVENT))
    events = list(stream["EventStream"])
    assert b"".join(e["PayloadChunk"]["Payload"] for e in events if "PayloadChunk" in e)
    assert events[-1] == {"InvokeComplete": {}}

    # a burst on the warm instances: on node a one Event, one stream and one plain invoke
    event_fn, stream_fn = on_a[0], on_a[1]
    statuses: dict[str, int] = {}
    outcomes: dict[str, tuple[str, str | None]] = {}

    def call(name: str) -> None:
        if name == stream_fn:
            resp = c.invoke_with_response_stream(FunctionName=name, Payload=json.dumps({"sleep": 30}))
            end = [e for e in resp["EventStream"] if "InvokeComplete" in e][-1]["InvokeComplete"]
            statuses[name] = resp["StatusCode"]
            outcomes[name] = (resp["ResponseMetadata"]["RequestId"], end.get("ErrorCode"))
            return
        resp = c.invoke(FunctionName=name, Payload=json.dumps({"sleep": 30}))
        statuses[name] = resp["StatusCode"]
        outcomes[name] = (resp["ResponseMetadata"]["RequestId"], resp.get("FunctionError"))

    threads = [threading.Thread(target=call, args=(n,)) for n in NAMES if n != event_fn]
    for t in threads:
        t.start()
    event = c.invoke(FunctionName=event_fn, InvocationType="Event", Payload=json.dumps({"sleep": 30}))
    assert event["StatusCode"] == 202
    event_id = event["ResponseMetadata"]["RequestId"]
    wait_for(lambda: all(i["state"] == "BUSY" for i in node(server)["Instances"] if i["node_id"] == node_a)
             and sum(i["state"] == "BUSY" for i in node(server)["Instances"]) == 6, 60, "the burst to run")
    killed_ts = time.time()
    ray.kill(ray.get_actor(agent_name(ray_a, 0)), no_restart=True)
    for t in threads:
        t.join(120)
    assert all(code == 200 for code in statuses.values()), statuses   # no 5xx: lost work is a function error
    for name in on_a:
        if name == event_fn:
            continue
        rid, error = outcomes[name]
        assert error == ("Runtime.NodeLost" if name == stream_fn else "Unhandled"), name
        rec = invocation_record(server, rid)
        assert rec["status"] == "function_error" and rec["error_type"] == "Runtime.NodeLost"
        assert node_a in rec["error_message"] and rec["end_ts"] < killed_ts + 25   # not the 30 s sleep
    for name in on_b:
        assert outcomes[name][1] is None, name
    lost = {n["NodeId"]: n["State"] for n in node(server)["Nodes"]}
    assert lost == {node_a: "lost", node_b: "alive"}

    # the Event was retried on the surviving node
    def event_done() -> dict | None:
        rec = invocation_record(server, event_id)
        return rec if rec["event"]["Status"] in ("success", "function_error") else None
    rec = wait_for(event_done, 120, "the event's retry")
    assert rec["event"]["Status"] == "success" and rec["event"]["Attempts"] == 2
    assert rec["status"] == "success"   # the record read with a final event status is that attempt's
    assert rec["instance_id"] in {i["instance_id"] for i in node(server)["Instances"] if i["node_id"] == node_b}

    # later requests succeed, on node b
    for name in on_a:
        resp = c.invoke(FunctionName=name, Payload=json.dumps(EVENT))
        assert resp["StatusCode"] == 200 and "FunctionError" not in resp
    assert {i["node_id"] for i in node(server)["Instances"]} == {node_b}

    # a node that joins later gets an agent, the backbone, and new work
    ray_cluster.add_node(num_cpus=1, resources={"slfaas_node": 1, "node_c": 1})
    ray_c = _ray_node("node_c")
    wait_for(lambda: any(n["Host"].endswith("/" + ray_c[:12]) and n["Backbones"] for n in node(server)["Nodes"]),
             120, "the joining node's agent and backbone")
    node_c = _agent_node(node(server), ray_c)
    deploy(c, "ray-late", tiny_assets.zip(tiny_assets.adapter_a, {"handler.py": HANDLER}), MemorySize=1024)
    resp = c.invoke(FunctionName="ray-late", Payload=json.dumps(EVENT))
    assert "FunctionError" not in resp
    assert {i["node_id"] for i in node(server)["Instances"] if i["function_name"] == "ray-late"} == {node_c}

    # one cost report over every node: its total is the sum of the records, each naming its node
    usage = server.api("GET", "/slfaas/v1/cost/usage")["Usage"]
    assert {u["node_id"] for u in usage} == {node_a, node_b, node_c}
    lost_ids = {outcomes[n][0] for n in on_a if n != event_fn}
    assert not lost_ids & {u["request_id"] for u in usage}   # a lost node billed nothing for them
    report = server.api("GET", "/slfaas/v1/cost/report?format=json")
    assert Decimal(report["total"]["cost_usd"]) == sum((Decimal(u["cost_usd"]) for u in usage), Decimal(0))
    assert report["total"]["invocations"] == len(usage)
    assert {n["node_id"] for n in server.api("GET", "/slfaas/v1/cost/nodes")["Nodes"]} >= {node_a, node_b, node_c}
    assert server.stop() == 0
