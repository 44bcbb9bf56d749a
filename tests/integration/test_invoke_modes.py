"""Issue 3, item 2: invocation modes through boto3 against a live server: Event (202, run in
the background with Lambda's retries, result kept in the record), DryRun (204), LogType=Tail,
ClientContext, payload limits, and FunctionError Unhandled for handler errors and timeouts."""
from __future__ import annotations

import base64
import json
import os
import re
from unittest import mock

import pytest

from tests.conftest import LiveServer, deploy
from tests.integration._util import aws_error, invocation_record, raw_http, request_id, wait_for

MODES_HANDLER = '''
import sys
import time


def handler(event, context):
    mode = event.get("mode")
    if mode == "print":
        print(f"marker {event['marker']}", flush=True)
        if event.get("bulk"):
            print("x" * event["bulk"], flush=True)
        return {"ok": True}
    if mode == "lines":   # much output just before the response: the pipe holds the end of it
        for i in range(event["lines"]):
            print(f"line {i:06d} " + "y" * 90)
        print(f"to stderr {event['marker']}", file=sys.stderr)
        print(f"last {event['marker']}", flush=True)
        return {"ok": True}
    if mode == "fail":
        print(f"attempt of {context.aws_request_id}", flush=True)
        raise ValueError(f"failing on purpose: {event.get('marker')}")
    if mode == "ctx":
        cc = context.client_context
        if cc is None:
            return {"client_context": None}
        return {"custom": cc.custom, "env": cc.env, "app_title": cc.client.app_title if cc.client else None}
    if mode == "sleep":
        time.sleep(event["seconds"])
        return {"slept": event["seconds"]}
    if mode == "size":
        return {"chars": len(event.get("blob", ""))}
    return context.generate_event(event)
'''


@pytest.fixture(scope="module")
def server(tmp_path_factory):  # type: ignore[no-untyped-def]
    # Lambda retries a failed event after ~1 and ~2 minutes; this server after 0.3 and 0.6 s.
    with mock.patch.dict(os.environ, {"SLFAAS_EVENT_RETRY_DELAYS_S": "0.3,0.6",
                                      "SLFAAS_EVENT_THROTTLE_BACKOFF_S": "0.2"}):
        s = LiveServer(tmp_path_factory.mktemp("modes-data"), "--keep-alive-s", "600").start()
    yield s
    if s.alive():
        s.stop()


@pytest.fixture(scope="module")
def client(server):  # type: ignore[no-untyped-def]
    return server.client()


@pytest.fixture(scope="module")
def fn(tiny_assets, client) -> str:  # type: ignore[no-untyped-def]
    deploy(client, "modes", tiny_assets.zip(tiny_assets.adapter_a, extra={"handler.py": MODES_HANDLER}))
    return "modes"


def test_log_type_tail(client, fn):  # type: ignore[no-untyped-def]
    first = client.invoke(FunctionName=fn, LogType="Tail", Payload=json.dumps({"mode": "print", "marker": "m-1"}))
    assert "FunctionError" not in first
    log = base64.b64decode(first["LogResult"]).decode()
    rid = request_id(first)
    lines = log.splitlines()
    assert lines[0] == f"START RequestId: {rid} Version: $LATEST", log
    assert "marker m-1" in lines
    assert lines[-2] == f"END RequestId: {rid}"
    report = lines[-1]
    assert re.fullmatch(rf"REPORT RequestId: {rid}\tDuration: [\d.]+ ms\tBilled Duration: \d+ ms\t"
                        rf"Memory Size: 2048 MB\tMax Memory Used: [1-9]\d* MB\tInit Duration: [\d.]+ ms"
                        rf"\tBilled Device Seconds: [\d.]+\tBatch Size: 1\tPreload Tier: cold\tAdapter Tier: disk\tCost: \$[\d.]+",
                        report), report

    # A warm invocation: no Init Duration; only this invocation's lines; the last 4 KB of a long log.
    second = client.invoke(FunctionName=fn, LogType="Tail",
                           Payload=json.dumps({"mode": "print", "marker": "m-2", "bulk": 10_000}))
    raw = base64.b64decode(second["LogResult"])
    assert len(raw) == 4096
    text = raw.decode()
    assert "marker m-1" not in text and "Init Duration" not in text
    assert text.splitlines()[-1].startswith(f"REPORT RequestId: {request_id(second)}\tDuration: ")
    assert "Max Memory Used: " in text
    # Without LogType (or LogType=None) there is no LogResult.
    assert "LogResult" not in client.invoke(FunctionName=fn, Payload=json.dumps({"mode": "print", "marker": "x"}))
    assert "LogResult" not in client.invoke(FunctionName=fn, LogType="None",
                                            Payload=json.dumps({"mode": "print", "marker": "y"}))
    # A failed invocation's tail has the error in it.
    failed = client.invoke(FunctionName=fn, LogType="Tail", Payload=json.dumps({"mode": "fail", "marker": "t"}))
    assert failed["FunctionError"] == "Unhandled"
    assert "failing on purpose: t" in base64.b64decode(failed["LogResult"]).decode()


def test_log_type_tail_holds_all_output_written_before_the_response(client, fn):  # type: ignore[no-untyped-def]
    """The handler's last lines are still in the sandbox's pipe when its response arrives;
    Tail has them all the same, in order, before END and REPORT."""
    for n in range(3):
        resp = client.invoke(FunctionName=fn, LogType="Tail",
                             Payload=json.dumps({"mode": "lines", "lines": 3000, "marker": f"L{n}"}))
        lines = base64.b64decode(resp["LogResult"]).decode().splitlines()
        rid = request_id(resp)
        assert lines[-4:-2] == [f"to stderr L{n}", f"last L{n}"], lines[-6:]
        assert lines[-2] == f"END RequestId: {rid}" and lines[-1].startswith(f"REPORT RequestId: {rid}")
        assert lines[-5].startswith("line 002999 "), lines[-6:]


def test_dry_run(client, fn):  # type: ignore[no-untyped-def]
    resp = client.invoke(FunctionName=fn, InvocationType="DryRun", Payload=b"{}")
    assert resp["StatusCode"] == 204 and resp["Payload"].read() == b""
    aws_error(client, "ResourceNotFoundException",
           lambda: client.invoke(FunctionName="no-such-fn", InvocationType="DryRun"), 404)
    aws_error(client, "InvalidRequestContentException",
           lambda: client.invoke(FunctionName=fn, InvocationType="DryRun", Payload=b"{nope"), 400)


def test_client_context_reaches_the_handler(client, fn):  # type: ignore[no-untyped-def]
    ctx = {"client": {"installation_id": "i-1", "app_title": "slfaas-tests"}, "custom": {"tenant": "acme"},
           "env": {"locale": "en_GB"}}
    resp = client.invoke(FunctionName=fn, Payload=json.dumps({"mode": "ctx"}),
                         ClientContext=base64.b64encode(json.dumps(ctx).encode()).decode())
    body = json.loads(resp["Payload"].read())
    assert body == {"custom": {"tenant": "acme"}, "env": {"locale": "en_GB"}, "app_title": "slfaas-tests"}
    resp = client.invoke(FunctionName=fn, Payload=json.dumps({"mode": "ctx"}))
    assert json.loads(resp["Payload"].read()) == {"client_context": None}
    for bad in ("not base64 !!", base64.b64encode(b"[1, 2]").decode(), base64.b64encode(b"{oops").decode()):
        err = aws_error(client, "InvalidParameterValueException",
                     lambda: client.invoke(FunctionName=fn, Payload=b"{}", ClientContext=bad), 400)
        assert "Client context" in err["Error"]["Message"]


def test_payload_limits(server, client, fn):  # type: ignore[no-untyped-def]
    # Just under 6 MB synchronously is fine.
    blob = "y" * (6 * 1024 * 1024 - 100)
    resp = client.invoke(FunctionName=fn, Payload=json.dumps({"mode": "size", "blob": blob}))
    assert json.loads(resp["Payload"].read()) == {"chars": len(blob)}
    over_sync = json.dumps({"mode": "size", "blob": "y" * (6 * 1024 * 1024)})
    err = aws_error(client, "RequestTooLargeException", lambda: client.invoke(FunctionName=fn, Payload=over_sync), 413)
    assert "6291456" in err["Error"]["Message"]
    over_async = json.dumps({"mode": "size", "blob": "y" * (1024 * 1024)})
    err = aws_error(client, "RequestTooLargeException",
                 lambda: client.invoke(FunctionName=fn, InvocationType="Event", Payload=over_async), 413)
    assert "1048576" in err["Error"]["Message"]
    ok_async = json.dumps({"mode": "size", "blob": "y" * (1024 * 1024 - 100)})
    accepted = client.invoke(FunctionName=fn, InvocationType="Event", Payload=ok_async)
    assert accepted["StatusCode"] == 202
    rid = request_id(accepted)
    wait_for(lambda: invocation_record(server, rid)["event"]["Status"] == "success", 30, "the large event to run")
    assert invocation_record(server, rid)["event"]["Result"] == {"chars": 1024 * 1024 - 100}


def test_handler_error_and_timeout_are_unhandled(tiny_assets, client, fn):  # type: ignore[no-untyped-def]
    resp = client.invoke(FunctionName=fn, Payload=json.dumps({"mode": "fail", "marker": "sync"}))
    assert resp["StatusCode"] == 200 and resp["FunctionError"] == "Unhandled"
    body = json.loads(resp["Payload"].read())
    assert set(body) == {"errorMessage", "errorType", "stackTrace"}
    assert (body["errorType"], body["errorMessage"]) == ("ValueError", "failing on purpose: sync")
    assert isinstance(body["stackTrace"], list) and body["stackTrace"]

    deploy(client, "modes-slow", tiny_assets.zip(tiny_assets.adapter_a, extra={"handler.py": MODES_HANDLER}),
           Timeout=1)
    resp = client.invoke(FunctionName="modes-slow", Payload=json.dumps({"mode": "sleep", "seconds": 3}))
    assert resp["FunctionError"] == "Unhandled"
    body = json.loads(resp["Payload"].read())
    assert set(body) == {"errorMessage", "errorType", "stackTrace"}
    assert body["errorType"] == "Sandbox.Timedout"
    assert body["errorMessage"] == "Task timed out after 1.00 seconds"
    client.delete_function(FunctionName="modes-slow")


def test_event_success_keeps_the_result(server, client, fn):  # type: ignore[no-untyped-def]
    resp = client.invoke(FunctionName=fn, InvocationType="Event",
                         Payload=json.dumps({"prompt": "ahoy", "max_tokens": 3, "temperature": 0}))
    assert resp["StatusCode"] == 202 and resp["Payload"].read() == b""
    rid = request_id(resp)
    wait_for(lambda: invocation_record(server, rid)["event"]["Status"] == "success", 30, "the event to succeed")
    rec = invocation_record(server, rid)
    assert rec["status"] == "success" and rec["event"]["Attempts"] == 1
    assert rec["event"]["Result"]["usage"]["completion_tokens"] >= 1
    sync = json.loads(client.invoke(FunctionName=fn, Payload=json.dumps(
        {"prompt": "ahoy", "max_tokens": 3, "temperature": 0}))["Payload"].read())
    assert rec["event"]["Result"]["text"] == sync["text"]
    aws_error(client, "ResourceNotFoundException",
           lambda: client.invoke(FunctionName="no-such-fn", InvocationType="Event", Payload=b"{}"), 404)


def test_event_function_error_is_retried_twice(server, client, fn):  # type: ignore[no-untyped-def]
    resp = client.invoke(FunctionName=fn, InvocationType="Event", Payload=json.dumps({"mode": "fail", "marker": "ev"}))
    assert resp["StatusCode"] == 202
    rid = request_id(resp)
    wait_for(lambda: invocation_record(server, rid)["event"]["Status"] == "function_error", 30,
             "the event's retries to run out")
    rec = invocation_record(server, rid)
    assert rec["event"]["Attempts"] == 3 and rec["event"]["FunctionError"] == "Unhandled"
    assert rec["event"]["Result"]["errorMessage"] == "failing on purpose: ev"
    assert rec["event"]["ErrorType"] == "ValueError"
    logs = server.api("GET", f"/slfaas/v1/functions/{fn}/logs")
    starts = re.findall(rf"START RequestId: {rid}", logs)
    assert len(starts) == 3, logs[-3000:]   # one attempt and two retries, same request id
    # The retries waited (0.3 s, then 0.6 s) between attempts.
    assert rec["end_ts"] - rec["event"]["EnqueuedTs"] >= 0.9


def test_bad_invocation_headers(server, fn):  # type: ignore[no-untyped-def]
    path = f"/2015-03-31/functions/{fn}/invocations"
    for headers in ({"X-Amz-Log-Type": "Everything"}, {"X-Amz-Invocation-Type": "Later"}):
        status, got, body = raw_http(server.url, "POST", path, b"{}", {"Content-Type": "application/json", **headers})
        assert status == 400 and got["x-amzn-errortype"] == "InvalidParameterValueException", body
