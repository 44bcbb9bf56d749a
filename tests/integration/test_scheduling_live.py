"""The SLO scheduler against a live server, real boto3 (retries off: boto3 retries 429s by
default) and real process sandboxes: a burst beyond what the node may queue gets 429s with
Retry-After and nothing else goes wrong; requests that queue for one function run as one
batch; functions in shared execution share one runtime and one batch, each with its own
adapter's outputs and its own bill."""
from __future__ import annotations

import json
import threading

import pytest
from botocore.config import Config

from tests.conftest import deploy
from tests.integration._util import SLEEPER_HANDLER, instances_of, invocations_of, invoke, node, request_id

pytestmark = pytest.mark.slow

BURST = 10


def _client(server):  # type: ignore[no-untyped-def]
    import boto3

    return boto3.client("lambda", endpoint_url=server.url, region_name="us-east-1", aws_access_key_id="test",
                        aws_secret_access_key="test", config=Config(retries={"max_attempts": 0}, read_timeout=300))


def _usage(server, name: str) -> dict[str, dict]:  # type: ignore[no-untyped-def]
    return {u["request_id"]: u for u in server.api("GET", f"/slfaas/v1/cost/usage?function={name}")["Usage"]}


def test_a_burst_beyond_the_queue_gets_429s_with_retry_after_and_the_rest_is_served(
        tiny_assets, live_server_factory) -> None:  # type: ignore[no-untyped-def]
    # one batch may run on the device at a time: the rest waits in the function's queue, up to 3
    server = live_server_factory("--keep-alive-s", "600", "--max-running-batches", "1", "--max-queue-per-function",
                                 "3", "--max-queue-s", "240")
    c = _client(server)
    deploy(c, "burst", tiny_assets.zip(tiny_assets.adapter_a, extra={"handler.py": SLEEPER_HANDLER}), MemorySize=1024)
    warm, _ = invoke(c, "burst", {"sleep": 0})
    assert "FunctionError" not in warm

    ok: list[str] = []
    refused: list[dict] = []
    lock = threading.Lock()
    start = threading.Barrier(BURST)

    def one() -> None:
        start.wait()
        try:
            resp, body = invoke(c, "burst", {"sleep": 3})
            assert "FunctionError" not in resp, body
            with lock:
                ok.append(request_id(resp))
        except c.exceptions.TooManyRequestsException as exc:
            with lock:
                refused.append(exc.response)
    callers = [threading.Thread(target=one) for _ in range(BURST)]
    for t in callers:
        t.start()
    for t in callers:
        t.join(300)

    # one runs, three wait: the rest are refused at once (a later arrival may find room)
    assert len(ok) + len(refused) == BURST and len(ok) >= 4 and refused, (len(ok), len(refused))
    for err in refused:
        assert err["ResponseMetadata"]["HTTPStatusCode"] == 429
        assert err["Error"]["Code"] == "TooManyRequestsException"
        assert err["Reason"] == "FunctionQueueFull"
        assert int(err["ResponseMetadata"]["HTTPHeaders"]["retry-after"]) >= 1
    # every accepted invocation is recorded as served and billed; no refused one is
    records = {r["request_id"]: r for r in invocations_of(server, "burst")}
    assert all(records[rid]["status"] == "success" for rid in ok)
    served = {rid for rid, r in records.items() if r["status"] == "success"}
    assert served == {*ok, request_id(warm)}
    assert set(_usage(server, "burst")) == served
    refused_ids = {e["ResponseMetadata"].get("RequestId") for e in refused} - {None, ""}
    assert not refused_ids & served
    # no crash: the server and its one instance go on
    again, body = invoke(c, "burst", {"sleep": 0})
    assert "FunctionError" not in again, body
    assert len(instances_of(server, "burst")) == 1


def test_requests_that_queue_for_one_function_run_as_one_batch(tiny_assets, live_server_factory) -> None:  # type: ignore[no-untyped-def]
    server = live_server_factory("--keep-alive-s", "600", "--max-running-batches", "1", "--max-queue-s", "240")
    c = _client(server)
    deploy(c, "blocker", tiny_assets.zip(tiny_assets.adapter_b, extra={"handler.py": SLEEPER_HANDLER}),
           MemorySize=1024)
    deploy(c, "batched", tiny_assets.zip(tiny_assets.adapter_a), MemorySize=2048,
           Environment={"Variables": {"SLFAAS_MAX_BATCH_SIZE": "4"}})
    results: dict[str, tuple[dict, dict]] = {}
    blocker = threading.Thread(target=lambda: results.__setitem__("blocker", invoke(c, "blocker", {"sleep": 4})))
    blocker.start()
    # the device's one running batch is the blocker's: these four wait in the batched function's queue
    # long enough that the four, handed to the new instance together, share decode steps
    events = [{"prompt": f"request number {i} says", "max_tokens": 400, "temperature": 0, "ignore_eos": True}
              for i in range(4)]

    def one(i: int) -> None:
        results[f"b{i}"] = invoke(c, "batched", events[i])
    callers = [threading.Thread(target=one, args=(i,)) for i in range(4)]
    for t in callers:
        t.start()
    for t in [blocker, *callers]:
        t.join(300)
    assert "FunctionError" not in results["blocker"][0]
    ids = []
    for i in range(4):
        resp, body = results[f"b{i}"]
        assert "FunctionError" not in resp, body
        ids.append(request_id(resp))
    usage = _usage(server, "batched")
    # one instance, started once for the whole batch: each request billed its share of batches > 1
    assert sum(1 for rid in ids if usage[rid]["cold_start"]) == 1
    assert {r["instance_id"] for r in invocations_of(server, "batched")} == \
        {i["instance_id"] for i in instances_of(server, "batched")}
    for rid in ids:
        assert usage[rid]["batch_size"] >= 2, usage[rid]
        assert 0 < usage[rid]["compute_device_s"] < usage[rid]["batch_device_s"]


def test_functions_in_shared_execution_share_a_runtime_and_its_batches(tiny_assets, live_server_factory) -> None:  # type: ignore[no-untyped-def]
    server = live_server_factory("--keep-alive-s", "600")
    c = _client(server)
    shared = {"Variables": {"SLFAAS_SHARED_EXECUTION": "1"}}
    for name, adapter in (("own-a", tiny_assets.adapter_a), ("own-b", tiny_assets.adapter_b)):
        deploy(c, name, tiny_assets.zip(adapter), MemorySize=2048)
    for name, adapter in (("shared-a", tiny_assets.adapter_a), ("shared-b", tiny_assets.adapter_b)):
        deploy(c, name, tiny_assets.zip(adapter), MemorySize=2048, Environment=shared)
    event = {"prompt": "the quick brown fox", "max_tokens": 24, "temperature": 0, "ignore_eos": True,
             "return_tokens": True}
    names = ("shared-a", "shared-b", "shared-a", "shared-b")
    results: dict[int, tuple[dict, dict]] = {}

    def one(i: int) -> None:
        results[i] = invoke(c, names[i], event)
    callers = [threading.Thread(target=one, args=(i,)) for i in range(len(names))]
    for t in callers:
        t.start()
    for t in callers:
        t.join(300)
    alone = {n: invoke(c, n, event)[1] for n in ("own-a", "own-b")}
    assert alone["own-a"]["tokens"] != alone["own-b"]["tokens"]
    for i, name in enumerate(names):
        resp, body = results[i]
        assert "FunctionError" not in resp, body
        assert body["tokens"] == alone[name.replace("shared", "own")]["tokens"]
    # one platform runtime served both functions; none of their own was started
    runtimes = [i for i in node(server)["Instances"] if i["function_name"].startswith("slfaas-shared-")]
    assert len(runtimes) == 1 and runtimes[0]["invocations"] >= 2
    assert instances_of(server, "shared-a") == [] and instances_of(server, "shared-b") == []
    # each function billed for its own invocations, by its share of the passes it was in
    for name in ("shared-a", "shared-b"):
        usage = _usage(server, name)
        assert len(usage) == 2
        assert all(u["status"] == "success" and u["compute_device_s"] > 0 for u in usage.values())
    sizes = [u["batch_size"] for n in ("shared-a", "shared-b") for u in _usage(server, n).values()]
    assert max(sizes) >= 2
    logs = str(server.api("GET", "/slfaas/v1/functions/shared-a/logs"))
    assert "REPORT RequestId:" in logs
