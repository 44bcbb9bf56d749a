"""Provisioned concurrency that holds instances, through boto3 against a live server: after
READY for N=2 (polled), two concurrent invocations of the alias are warm; the configuration
survives a restart (held again at start); deleting it releases the instances."""
from __future__ import annotations

import json
import threading
import time

from tests.conftest import LiveServer, deploy
from tests.integration._util import instances_of, invocation_record, request_id, wait_for

EVENT = {"prompt": "dear sir", "max_tokens": 4, "temperature": 0}
WAIT = {"Delay": 0.2, "MaxAttempts": 300}


def _ready(client, fn: str, qualifier: str, timeout_s: float = 180) -> dict:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while True:
        got = client.get_provisioned_concurrency_config(FunctionName=fn, Qualifier=qualifier)
        if got["Status"] == "READY":
            return got
        assert got["Status"] == "IN_PROGRESS", got
        assert time.monotonic() < deadline, f"not READY after {timeout_s} s: {got}"
        time.sleep(0.5)


def _held(server, fn: str, version: str) -> list[dict]:  # type: ignore[no-untyped-def]
    return [i for i in instances_of(server, fn) if i["version"] == version and i["provisioned"]
            and i["state"] in ("IDLE", "BUSY")]


def test_provisioned_concurrency_holds_warm_instances(tiny_assets, tmp_path) -> None:  # type: ignore[no-untyped-def]
    data = tmp_path / "data"
    server = LiveServer(data, "--keep-alive-s", "600").start()
    try:
        client = server.client()
        fn = "held"
        deploy(client, fn, tiny_assets.zip(tiny_assets.adapter_a))
        v1 = client.publish_version(FunctionName=fn)["Version"]
        client.get_waiter("published_version_active").wait(FunctionName=fn, Qualifier=v1, WaiterConfig=WAIT)
        client.create_alias(FunctionName=fn, Name="live", FunctionVersion=v1)

        put = client.put_provisioned_concurrency_config(FunctionName=fn, Qualifier="live",
                                                        ProvisionedConcurrentExecutions=2)
        assert put["Status"] == "IN_PROGRESS" and put["AllocatedProvisionedConcurrentExecutions"] < 2
        got = _ready(client, fn, "live")
        assert got["AllocatedProvisionedConcurrentExecutions"] == got["AvailableProvisionedConcurrentExecutions"] == 2
        held = {i["instance_id"] for i in _held(server, fn, v1)}
        assert len(held) == 2

        results: list = []
        barrier = threading.Barrier(2)

        def call() -> None:
            barrier.wait()
            results.append(client.invoke(FunctionName=fn, Qualifier="live", Payload=json.dumps(EVENT)))

        threads = [threading.Thread(target=call) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert len(results) == 2
        for resp in results:
            body = json.loads(resp["Payload"].read())
            assert "FunctionError" not in resp, body
            assert body["metrics"]["cold_start"] is False
            rec = invocation_record(server, request_id(resp))
            assert rec["cold_start"] is False and rec["instance_id"] in held
        assert {i["instance_id"] for i in _held(server, fn, v1)} == held   # still held, nothing new

        # a restart keeps the configuration; the fresh node holds the instances again
        server.stop()
        server = LiveServer(data, "--keep-alive-s", "600").start()
        client = server.client()
        assert client.get_provisioned_concurrency_config(FunctionName=fn, Qualifier="live")[
            "RequestedProvisionedConcurrentExecutions"] == 2
        _ready(client, fn, "live")
        assert len(_held(server, fn, v1)) == 2

        client.delete_provisioned_concurrency_config(FunctionName=fn, Qualifier="live")
        wait_for(lambda: [i for i in instances_of(server, fn) if i["state"] != "STOPPED"] == [], 30,
                 "the released instances to stop")
        assert server.api("GET", "/slfaas/v1/node")["Provisioned"] == []  # type: ignore[index]
    finally:
        if server.alive():
            server.stop()
