"""Acceptance 1: the Lambda API through a real boto3 client against a real ``slfaas server``:
create/get/list (paginated)/update code/update configuration/invoke/delete, the boto3 waiters,
and ResourceNotFoundException for unknown functions."""
from __future__ import annotations

import hashlib
import json
import urllib.request

import pytest

from tests.conftest import deploy
from tests.integration._util import ROLE, code_sha256, instances_of, invoke, pid_alive, wait_for

PROMPT = {"prompt": "ahoy matey, the treasure", "max_tokens": 12, "temperature": 0}
WAIT = {"Delay": 0.2, "MaxAttempts": 300}

# Answers with what the instance sees of its configuration, plus a generation.
CONFIG_ECHO_HANDLER = '''
import os


def handler(event, context):
    return {
        "greeting": os.environ.get("GREETING"),
        "memory_limit_in_mb": context.memory_limit_in_mb,
        "remaining_ms": context.get_remaining_time_in_millis(),
        "function_name": context.function_name,
        "text": context.generate(event.get("prompt", "hi"), max_tokens=4, temperature=0)["text"],
    }
'''


@pytest.fixture(scope="module")
def client(module_server):  # type: ignore[no-untyped-def]
    return module_server.client()


def test_create_get_invoke_delete(tiny_assets, module_server, client):  # type: ignore[no-untyped-def]
    zip_a = tiny_assets.zip(tiny_assets.adapter_a)
    created = client.create_function(FunctionName="crud", Runtime="slfaas-lora", Role=ROLE,
                                     Code={"ZipFile": zip_a}, Description="first", Timeout=30, MemorySize=1024)
    assert created["ResponseMetadata"]["HTTPStatusCode"] == 201
    assert created["State"] in ("Pending", "Active")
    assert created["CodeSha256"] == code_sha256(zip_a)
    assert created["CodeSize"] == len(zip_a)
    client.get_waiter("function_active_v2").wait(FunctionName="crud", WaiterConfig=WAIT)

    cfg = client.get_function_configuration(FunctionName="crud")
    assert cfg["State"] == "Active" and cfg["LastUpdateStatus"] == "Successful"
    assert (cfg["FunctionName"], cfg["Runtime"], cfg["Role"], cfg["Description"], cfg["Timeout"],
            cfg["MemorySize"]) == ("crud", "slfaas-lora", ROLE, "first", 30, 1024)
    assert cfg["CodeSha256"] == created["CodeSha256"]
    assert cfg["FunctionArn"].endswith(":function:crud")

    got = client.get_function(FunctionName="crud")
    cfg.pop("ResponseMetadata")
    assert got["Configuration"] == cfg
    # The code location serves back exactly the uploaded zip.
    with urllib.request.urlopen(got["Code"]["Location"], timeout=30) as r:
        assert hashlib.sha256(r.read()).digest() == hashlib.sha256(zip_a).digest()

    resp, body = invoke(client, "crud", PROMPT)
    assert resp["StatusCode"] == 200 and "FunctionError" not in resp, body
    assert resp["ExecutedVersion"] == "$LATEST"
    assert isinstance(body["text"], str)
    assert 1 <= body["usage"]["completion_tokens"] <= PROMPT["max_tokens"]
    assert body["usage"]["prompt_tokens"] >= 1
    # A full ARN names the same function; the second call is warm and greedy output is stable.
    resp2, body2 = invoke(client, cfg["FunctionArn"], PROMPT)
    assert "FunctionError" not in resp2 and body2["text"] == body["text"]
    assert body["metrics"]["cold_start"] is True and body2["metrics"]["cold_start"] is False

    pids = [i["pid"] for i in instances_of(module_server, "crud")]
    assert pids and all(pid_alive(p) for p in pids)

    deleted = client.delete_function(FunctionName="crud")
    assert deleted["ResponseMetadata"]["HTTPStatusCode"] == 204
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        client.get_function(FunctionName="crud")
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        client.invoke(FunctionName="crud", Payload=json.dumps(PROMPT))
    names = [f["FunctionName"] for p in client.get_paginator("list_functions").paginate() for f in p["Functions"]]
    assert "crud" not in names
    # Deleting a function stops its idle instances.
    assert instances_of(module_server, "crud") == []
    wait_for(lambda: not any(pid_alive(p) for p in pids), 10, "deleted function's instance to exit")

    # The name can be used again: a new function, new code, instances reused as usual.
    zip_b = tiny_assets.zip(tiny_assets.adapter_b)
    again = deploy(client, "crud", zip_b)
    assert again["CodeSha256"] == code_sha256(zip_b) and again["Description"] == ""
    _, first = invoke(client, "crud", PROMPT)
    _, second = invoke(client, "crud", PROMPT)
    assert first["metrics"]["cold_start"] is True and second["metrics"]["cold_start"] is False
    assert first["text"] == second["text"] != body["text"]
    client.delete_function(FunctionName="crud")


def test_unknown_function_is_resource_not_found(client):  # type: ignore[no-untyped-def]
    calls = {
        "get_function": lambda: client.get_function(FunctionName="no-such-fn"),
        "get_function_configuration": lambda: client.get_function_configuration(FunctionName="no-such-fn"),
        "invoke": lambda: client.invoke(FunctionName="no-such-fn", Payload=b'{"prompt": "x"}'),
        "delete_function": lambda: client.delete_function(FunctionName="no-such-fn"),
        "update_function_code": lambda: client.update_function_code(FunctionName="no-such-fn", ZipFile=b"PK"),
        "update_function_configuration": lambda: client.update_function_configuration(
            FunctionName="no-such-fn", Timeout=10),
    }
    for op, call in calls.items():
        with pytest.raises(client.exceptions.ResourceNotFoundException) as exc_info:
            call()
        assert exc_info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404, op


def test_list_functions_pagination(tiny_assets, client):  # type: ignore[no-untyped-def]
    zip_a = tiny_assets.zip(tiny_assets.adapter_a)
    wanted = {f"page-{i}" for i in range(5)}
    for name in sorted(wanted):
        deploy(client, name, zip_a)

    # By hand, MaxItems=2 and Marker.
    seen: list[str] = []
    pages = 0
    kwargs: dict = {"MaxItems": 2}
    while True:
        page = client.list_functions(**kwargs)
        pages += 1
        assert len(page["Functions"]) <= 2
        seen.extend(f["FunctionName"] for f in page["Functions"])
        if "NextMarker" not in page:
            break
        assert len(page["Functions"]) == 2
        kwargs["Marker"] = page["NextMarker"]
        assert pages < 100, "pagination does not end"
    assert len(seen) == len(set(seen)), f"a function came back twice: {seen}"
    assert wanted <= set(seen)
    assert pages >= 3  # at least 5 functions, 2 a page

    # With boto3's paginator.
    paged = [f["FunctionName"] for p in client.get_paginator("list_functions").paginate(
        PaginationConfig={"PageSize": 2}) for f in p["Functions"]]
    assert sorted(paged) == sorted(seen)
    assert len(paged) == len(set(paged))
    # One big page agrees with both.
    assert sorted(f["FunctionName"] for f in client.list_functions(MaxItems=1000)["Functions"]) == sorted(seen)
    # MaxItems caps a page with the paginator too.
    capped = client.get_paginator("list_functions").paginate(
        PaginationConfig={"MaxItems": 3, "PageSize": 2}).build_full_result()
    assert len(capped["Functions"]) == 3


def test_update_function_code(tiny_assets, module_server, client):  # type: ignore[no-untyped-def]
    zip_a, zip_b = tiny_assets.zip(tiny_assets.adapter_a), tiny_assets.zip(tiny_assets.adapter_b)
    before = deploy(client, "upd", zip_a)
    _, out_a = invoke(client, "upd", PROMPT)
    old_instances = instances_of(module_server, "upd")
    assert len(old_instances) == 1

    resp = client.update_function_code(FunctionName="upd", ZipFile=zip_b)
    assert resp["CodeSha256"] == code_sha256(zip_b) != before["CodeSha256"]
    assert resp["RevisionId"] != before["RevisionId"]
    assert resp["LastUpdateStatus"] in ("InProgress", "Successful")
    client.get_waiter("function_updated_v2").wait(FunctionName="upd", WaiterConfig=WAIT)
    after = client.get_function_configuration(FunctionName="upd")
    assert after["LastUpdateStatus"] == "Successful" and after["State"] == "Active"
    assert after["CodeSha256"] == code_sha256(zip_b)
    assert after["CodeSize"] == len(zip_b)
    assert after["RevisionId"] == resp["RevisionId"]

    resp_b, out_b = invoke(client, "upd", PROMPT)
    assert "FunctionError" not in resp_b, out_b
    assert out_b["text"] != out_a["text"], "new adapter gave the same output as the old one"
    assert out_b["metrics"]["cold_start"] is True  # a new revision never reuses an old instance
    # The old revision's instance was retired.
    now = instances_of(module_server, "upd")
    assert {i["revision_id"] for i in now} == {after["RevisionId"]}
    wait_for(lambda: not pid_alive(old_instances[0]["pid"]), 10, "old revision's instance to exit")


def test_update_function_configuration(tiny_assets, module_server, client):  # type: ignore[no-untyped-def]
    zip_echo = tiny_assets.zip(tiny_assets.adapter_b, extra={"handler.py": CONFIG_ECHO_HANDLER})
    before = deploy(client, "cfg", zip_echo, Timeout=20, MemorySize=512, Description="before")
    assert "Environment" not in before or not before["Environment"].get("Variables")

    resp = client.update_function_configuration(
        FunctionName="cfg", Timeout=45, MemorySize=1536, Description="after the update",
        Environment={"Variables": {"GREETING": "hello there"}})
    assert resp["RevisionId"] != before["RevisionId"]
    client.get_waiter("function_updated_v2").wait(FunctionName="cfg", WaiterConfig=WAIT)
    cfg = client.get_function_configuration(FunctionName="cfg")
    for got in (resp, cfg):
        assert got["Timeout"] == 45
        assert got["MemorySize"] == 1536
        assert got["Description"] == "after the update"
        assert got["Environment"]["Variables"] == {"GREETING": "hello there"}
    assert cfg["CodeSha256"] == before["CodeSha256"]  # configuration updates keep the code
    assert cfg["LastUpdateStatus"] == "Successful"

    # The instance runs with the new configuration.
    r, body = invoke(client, "cfg", {"prompt": "hi"})
    assert "FunctionError" not in r, body
    assert body["greeting"] == "hello there"
    assert body["memory_limit_in_mb"] == 1536
    assert body["function_name"] == "cfg"
    assert 20_000 < body["remaining_ms"] <= 45_000

    # A configuration update of the environment alone (others keep their values).
    client.update_function_configuration(FunctionName="cfg", Environment={"Variables": {"GREETING": "bye"}})
    client.get_waiter("function_updated_v2").wait(FunctionName="cfg", WaiterConfig=WAIT)
    cfg2 = client.get_function_configuration(FunctionName="cfg")
    assert cfg2["Environment"]["Variables"] == {"GREETING": "bye"}
    assert (cfg2["Timeout"], cfg2["MemorySize"], cfg2["Description"]) == (45, 1536, "after the update")
    assert cfg2["RevisionId"] != cfg["RevisionId"]
