"""Issue 3, item 4: reserved concurrency (enforced: 429 TooManyRequestsException with AWS's
Reason), provisioned concurrency configurations, and GetAccountSettings with real figures,
through boto3 against a live server."""
from __future__ import annotations

import json
import os
import threading
from unittest import mock

import pytest

from tests.conftest import LiveServer, deploy
from tests.integration._util import aws_error, SLEEPER_HANDLER, instances_of, invocation_record, raw_http, request_id, wait_for

WAIT = {"Delay": 0.2, "MaxAttempts": 300}
MAX_INSTANCES = 8


@pytest.fixture(scope="module")
def server(tmp_path_factory):  # type: ignore[no-untyped-def]
    with mock.patch.dict(os.environ, {"SLFAAS_EVENT_THROTTLE_BACKOFF_S": "0.2"}):
        # FCFS: the account's concurrency limit is then the instance limit (the SLO scheduler
        # queues and batches, so its limit is instances x the largest batch)
        s = LiveServer(tmp_path_factory.mktemp("conc-data"), "--keep-alive-s", "600", "--scheduler", "fcfs",
                       "--max-instances", str(MAX_INSTANCES)).start()
    yield s
    if s.alive():
        s.stop()


@pytest.fixture(scope="module")
def client(server):  # type: ignore[no-untyped-def]
    return server.client()


@pytest.fixture(scope="module")
def fn(tiny_assets, client) -> str:  # type: ignore[no-untyped-def]
    deploy(client, "conc", tiny_assets.zip(tiny_assets.adapter_a, extra={"handler.py": SLEEPER_HANDLER}))
    return "conc"


def test_reserved_concurrency_is_enforced(server, client, fn):  # type: ignore[no-untyped-def]
    assert "ReservedConcurrentExecutions" not in client.get_function_concurrency(FunctionName=fn)
    put = client.put_function_concurrency(FunctionName=fn, ReservedConcurrentExecutions=1)
    assert put["ReservedConcurrentExecutions"] == 1
    assert client.get_function_concurrency(FunctionName=fn)["ReservedConcurrentExecutions"] == 1
    assert client.get_function(FunctionName=fn)["Concurrency"] == {"ReservedConcurrentExecutions": 1}

    client.invoke(FunctionName=fn, Payload=json.dumps({"sleep": 0}))   # warm
    started = threading.Event()
    results: list = []

    def slow() -> None:
        started.set()
        results.append(client.invoke(FunctionName=fn, Payload=json.dumps({"sleep": 2})))

    t = threading.Thread(target=slow)
    t.start()
    started.wait()
    wait_for(lambda: any(i["state"] == "BUSY" for i in instances_of(server, fn)), 10, "the slow invocation to start")
    err = aws_error(client, "TooManyRequestsException",
                 lambda: client.invoke(FunctionName=fn, Payload=json.dumps({"sleep": 0})), 429)
    assert err["Reason"] == "ReservedFunctionConcurrentInvocationLimitExceeded"
    assert err["ResponseMetadata"]["HTTPHeaders"].get("retry-after")
    t.join(30)
    assert "FunctionError" not in results[0]
    assert "FunctionError" not in client.invoke(FunctionName=fn, Payload=json.dumps({"sleep": 0}))  # room again

    # 0 throttles every invocation, warm instance or not.
    client.put_function_concurrency(FunctionName=fn, ReservedConcurrentExecutions=0)
    for _ in range(3):
        err = aws_error(client, "TooManyRequestsException",
                     lambda: client.invoke(FunctionName=fn, Payload=json.dumps({"sleep": 0})), 429)
        assert err["Reason"] == "ReservedFunctionConcurrentInvocationLimitExceeded"
    client.delete_function_concurrency(FunctionName=fn)
    assert "ReservedConcurrentExecutions" not in client.get_function_concurrency(FunctionName=fn)
    assert "Concurrency" not in client.get_function(FunctionName=fn)
    assert "FunctionError" not in client.invoke(FunctionName=fn, Payload=json.dumps({"sleep": 0}))


def test_throttled_event_waits_for_capacity(server, client, fn):  # type: ignore[no-untyped-def]
    client.put_function_concurrency(FunctionName=fn, ReservedConcurrentExecutions=0)
    resp = client.invoke(FunctionName=fn, InvocationType="Event", Payload=json.dumps({"sleep": 0}))
    assert resp["StatusCode"] == 202   # accepted: throttling an event delays it, it is not refused
    rid = request_id(resp)
    wait_for(lambda: invocation_record(server, rid)["event"]["Throttles"] >= 2, 20, "the event to be throttled")
    assert invocation_record(server, rid)["event"]["Status"] == "retrying"
    assert invocation_record(server, rid)["event"]["Attempts"] == 0
    client.delete_function_concurrency(FunctionName=fn)
    wait_for(lambda: invocation_record(server, rid)["event"]["Status"] == "success", 30, "the event to run")
    assert invocation_record(server, rid)["event"]["Result"]["slept"] == 0


def test_reserved_concurrency_errors(server, client, fn):  # type: ignore[no-untyped-def]
    for call in (lambda: client.put_function_concurrency(FunctionName="nope", ReservedConcurrentExecutions=1),
                 lambda: client.get_function_concurrency(FunctionName="nope"),
                 lambda: client.delete_function_concurrency(FunctionName="nope")):
        aws_error(client, "ResourceNotFoundException", call, 404)
    # More than the account can spare (it must keep a tenth of its limit unreserved).
    err = aws_error(client, "InvalidParameterValueException",
                 lambda: client.put_function_concurrency(FunctionName=fn, ReservedConcurrentExecutions=MAX_INSTANCES),
                 400)
    assert "UnreservedConcurrentExecution below its minimum value of [1]" in err["Error"]["Message"]
    # Types and ranges boto3 would refuse before sending, over raw HTTP.
    for body in (b'{"ReservedConcurrentExecutions": -1}', b'{"ReservedConcurrentExecutions": "2"}', b"{}",
                 b"{not json"):
        status, headers, out = raw_http(server.url, "PUT", f"/2017-10-31/functions/{fn}/concurrency", body)
        assert status == 400 and headers["x-amzn-errortype"] in (
            "InvalidParameterValueException", "InvalidRequestContentException"), out
    assert "ReservedConcurrentExecutions" not in client.get_function_concurrency(FunctionName=fn)


def test_provisioned_concurrency_configs(client, fn):  # type: ignore[no-untyped-def]
    v1 = client.publish_version(FunctionName=fn)["Version"]
    client.get_waiter("published_version_active").wait(FunctionName=fn, Qualifier=v1, WaiterConfig=WAIT)
    client.create_alias(FunctionName=fn, Name="live", FunctionVersion=v1)

    put = client.put_provisioned_concurrency_config(FunctionName=fn, Qualifier=v1, ProvisionedConcurrentExecutions=2)
    assert put["ResponseMetadata"]["HTTPStatusCode"] == 202
    assert put["RequestedProvisionedConcurrentExecutions"] == 2 and put["Status"] == "IN_PROGRESS"
    assert put["LastModified"]
    got = client.get_provisioned_concurrency_config(FunctionName=fn, Qualifier=v1)
    assert got["RequestedProvisionedConcurrentExecutions"] == 2   # held instances: test_provisioned_concurrency

    client.put_provisioned_concurrency_config(FunctionName=fn, Qualifier="live", ProvisionedConcurrentExecutions=1)
    listed = client.list_provisioned_concurrency_configs(FunctionName=fn)["ProvisionedConcurrencyConfigs"]
    assert sorted((c["FunctionArn"].rsplit(":", 1)[1], c["RequestedProvisionedConcurrentExecutions"])
                  for c in listed) == [(v1, 2), ("live", 1)]
    paged = [c for p in client.get_paginator("list_provisioned_concurrency_configs").paginate(
        FunctionName=fn, PaginationConfig={"PageSize": 1}) for c in p["ProvisionedConcurrencyConfigs"]]
    assert len(paged) == 2

    # Error paths.
    aws_error(client, "InvalidParameterValueException", lambda: client.put_provisioned_concurrency_config(
        FunctionName=fn, Qualifier="$LATEST", ProvisionedConcurrentExecutions=1), 400)
    aws_error(client, "ResourceNotFoundException", lambda: client.put_provisioned_concurrency_config(
        FunctionName=fn, Qualifier="99", ProvisionedConcurrentExecutions=1), 404)
    aws_error(client, "ResourceNotFoundException", lambda: client.put_provisioned_concurrency_config(
        FunctionName="nope", Qualifier="1", ProvisionedConcurrentExecutions=1), 404)
    client.create_alias(FunctionName=fn, Name="bare", FunctionVersion=v1)
    aws_error(client, "ProvisionedConcurrencyConfigNotFoundException",
           lambda: client.get_provisioned_concurrency_config(FunctionName=fn, Qualifier="bare"), 404)
    # Reserved concurrency below the provisioned total is refused, and the other way round.
    aws_error(client, "InvalidParameterValueException",
           lambda: client.put_function_concurrency(FunctionName=fn, ReservedConcurrentExecutions=2), 400)
    client.put_function_concurrency(FunctionName=fn, ReservedConcurrentExecutions=4)
    aws_error(client, "InvalidParameterValueException", lambda: client.put_provisioned_concurrency_config(
        FunctionName=fn, Qualifier="bare", ProvisionedConcurrentExecutions=2), 400)
    client.delete_function_concurrency(FunctionName=fn)
    # A weighted alias cannot have provisioned concurrency.
    client.update_function_configuration(FunctionName=fn, Timeout=31)
    client.get_waiter("function_updated_v2").wait(FunctionName=fn, WaiterConfig=WAIT)
    v2 = client.publish_version(FunctionName=fn)["Version"]
    client.create_alias(FunctionName=fn, Name="split", FunctionVersion=v1,
                        RoutingConfig={"AdditionalVersionWeights": {v2: 0.5}})
    aws_error(client, "InvalidParameterValueException", lambda: client.put_provisioned_concurrency_config(
        FunctionName=fn, Qualifier="split", ProvisionedConcurrentExecutions=1), 400)

    assert client.delete_provisioned_concurrency_config(FunctionName=fn, Qualifier=v1)[
        "ResponseMetadata"]["HTTPStatusCode"] == 204
    aws_error(client, "ProvisionedConcurrencyConfigNotFoundException",
           lambda: client.get_provisioned_concurrency_config(FunctionName=fn, Qualifier=v1), 404)
    aws_error(client, "ProvisionedConcurrencyConfigNotFoundException",
           lambda: client.delete_provisioned_concurrency_config(FunctionName=fn, Qualifier=v1), 404)
    # Deleting the alias takes its configuration with it.
    client.delete_alias(FunctionName=fn, Name="live")
    assert client.list_provisioned_concurrency_configs(FunctionName=fn)["ProvisionedConcurrencyConfigs"] == []


def test_account_settings_report_real_usage(tiny_assets, client, fn):  # type: ignore[no-untyped-def]
    def usage() -> tuple[dict, dict]:
        s = client.get_account_settings()
        return s["AccountLimit"], s["AccountUsage"]

    def code_total() -> int:
        total = 0
        for f in client.list_functions()["Functions"]:
            total += sum(v["CodeSize"] for v in client.list_versions_by_function(FunctionName=f["FunctionName"])
                         ["Versions"])
        return total

    limit, used = usage()
    assert limit["ConcurrentExecutions"] == MAX_INSTANCES
    assert limit["UnreservedConcurrentExecutions"] == MAX_INSTANCES
    assert used["FunctionCount"] == len(client.list_functions()["Functions"])
    assert used["TotalCodeSize"] == code_total() > 0
    assert limit["TotalCodeSize"] > used["TotalCodeSize"] and limit["CodeSizeUnzipped"] > 0
    assert limit["CodeSizeZipped"] > 0

    zip_b = tiny_assets.zip(tiny_assets.adapter_b)
    deploy(client, "acct-extra", zip_b)
    client.put_function_concurrency(FunctionName="acct-extra", ReservedConcurrentExecutions=3)
    limit2, used2 = usage()
    assert used2["FunctionCount"] == used["FunctionCount"] + 1
    assert used2["TotalCodeSize"] == used["TotalCodeSize"] + len(zip_b) == code_total()
    assert limit2["UnreservedConcurrentExecutions"] == MAX_INSTANCES - 3
    client.delete_function(FunctionName="acct-extra")
    limit3, used3 = usage()
    assert used3 == used and limit3["UnreservedConcurrentExecutions"] == MAX_INSTANCES
