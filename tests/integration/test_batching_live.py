"""Batched execution against a live server, real boto3 and real process sandboxes: with
SLFAAS_MAX_BATCH_SIZE=4, concurrent invocations of one function share one instance and its
forward passes; billing records each one's batch size and bills each its share; outputs equal
those of the same requests on an unbatched function."""
from __future__ import annotations

import json
import re
import threading

import pytest

from tests.conftest import deploy
from tests.integration._util import instances_of, invocations_of, invoke, request_id

pytestmark = pytest.mark.slow

# a user's handler.py: its calls run in several threads at once, context.generate batches them
HANDLER = '''
def handler(event, context):
    if context.response_stream:
        return context.stream_event(event)
    out = context.generate_event(event)
    out["handler"] = "custom"
    return out
'''
LONG = {"prompt": "the quick brown fox", "max_tokens": 1500, "temperature": 0, "ignore_eos": True}
JOINERS = [
    {"prompt": "hello world, how are you today?", "max_tokens": 40, "temperature": 0, "return_tokens": True,
     "ignore_eos": True},
    {"prompt": "ahoy", "max_tokens": 40, "temperature": 0.8, "seed": 7, "return_tokens": True, "ignore_eos": True},
    {"prompt": "dear sir, thank you kindly for your letter; we shall", "max_tokens": 40, "temperature": 0.9,
     "top_p": 0.7, "seed": 3, "return_tokens": True, "ignore_eos": True},
]


def _usage(server, name: str) -> dict[str, dict]:  # type: ignore[no-untyped-def]
    rows = server.api("GET", f"/slfaas/v1/cost/usage?function={name}")["Usage"]
    return {u["request_id"]: u for u in rows}


def test_concurrent_invocations_run_batched_in_one_instance(tiny_assets, live_server_factory) -> None:  # type: ignore[no-untyped-def]
    server = live_server_factory("--keep-alive-s", "600")
    c = server.client()
    deploy(c, "batched", tiny_assets.zip(tiny_assets.adapter_a, {"handler.py": HANDLER}), MemorySize=2048,
           Environment={"Variables": {"SLFAAS_MAX_BATCH_SIZE": "4"}})
    deploy(c, "alone", tiny_assets.zip(tiny_assets.adapter_a, {"handler.py": HANDLER}), MemorySize=2048)
    warm, body = invoke(c, "batched", {"prompt": "warm up", "max_tokens": 2})
    assert "FunctionError" not in warm and body["metrics"]["batch_size"] == 1

    # A streams a long generation; once its first chunk is here it is running, and the three
    # others arrive while it still decodes: they are prefilled and join its decode steps
    stream = c.invoke_with_response_stream(FunctionName="batched", Payload=json.dumps(LONG))
    events = iter(stream["EventStream"])
    first = next(events)
    assert "PayloadChunk" in first
    joined: dict[int, tuple[str, dict]] = {}

    def join(i: int) -> None:
        resp, out = invoke(c, "batched", JOINERS[i])
        assert "FunctionError" not in resp, out
        joined[i] = (request_id(resp), out)
    threads = [threading.Thread(target=join, args=(i,)) for i in range(len(JOINERS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    rest = list(events)
    assert rest[-1] == {"InvokeComplete": {}}
    assert len(joined) == 3

    # one instance served all of it
    [instance] = instances_of(server, "batched")
    assert instance["invocations"] == 5
    assert {r["instance_id"] for r in invocations_of(server, "batched")} == {instance["instance_id"]}

    # each request equals itself run alone (an unbatched function of the same adapter)
    for i, event in enumerate(JOINERS):
        _, out = joined[i]
        _, solo = invoke(c, "alone", event)
        assert out["tokens"] == solo["tokens"] and out["text"] == solo["text"]
        assert out["handler"] == "custom" and solo["metrics"]["batch_size"] == 1
        assert out["metrics"]["batch_size"] > 1

    # billing: batch sizes > 1, each request billed its share of the passes it was in
    usage = _usage(server, "batched")
    stream_id = stream["ResponseMetadata"]["RequestId"]
    batched = [usage[stream_id], *(usage[joined[i][0]] for i in range(3))]
    for u in batched:
        assert u["status"] == "success" and 2 <= u["batch_size"] <= 4
        assert 0 < u["compute_device_s"] < u["batch_device_s"]
    assert all(u["batch_size"] == 1 for u in _usage(server, "alone").values())
    # the shares never add up to more than the time the batch ran
    span_s = max(u["end_ts"] for u in batched) - min(u["start_ts"] for u in batched)
    assert sum(u["compute_device_s"] for u in batched) <= span_s
    tail = str(server.api("GET", "/slfaas/v1/functions/batched/logs"))
    reports = [line for line in tail.splitlines() if "REPORT RequestId:" in line]
    assert sum(1 for line in reports if re.search(r"Batch Size: [234]\b", line)) == 4
