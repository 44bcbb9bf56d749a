"""InvokeWithResponseStream through boto3 against a live server: tokens arrive as PayloadChunk
events while the function is still generating, then one InvokeComplete (with the error, if
the function failed); everything that refuses the request does so before the stream, with
the AWS error; and time-to-first-token is a fraction of the buffered invoke's time."""
from __future__ import annotations

import json
import time

import pytest

from tests.conftest import deploy
from tests.integration._util import invocation_record, invoke

# Streams in several ways, chosen by event["mode"]; otherwise the built-in generation.
STREAM_HANDLER = '''
import os
import time


def handler(event, context):
    mode = event.get("mode")
    if mode == "slow":            # a first piece, then a long pause before the second
        def pieces():
            yield "first "
            time.sleep(event.get("sleep", 2.0))
            yield "second"
        return pieces()
    if mode == "fail":            # fails after streaming began
        def pieces():
            yield "partial "
            raise ValueError("broke mid-stream")
        return pieces()
    if mode == "crash":           # the process dies after streaming began
        def pieces():
            yield "partial "
            time.sleep(0.2)
            os._exit(3)
        return pieces()
    if mode == "early":           # fails before anything was streamed
        raise KeyError("nothing streamed")
    if mode == "dict":            # a plain result: one chunk of JSON
        return {"answer": 42}
    if mode == "bytes":
        return iter([b"\\x00\\x01", "text", {"k": 1}])
    return context.stream_event(event) if context.response_stream else context.generate_event(event)
'''

GREEDY = {"prompt": "ahoy matey, the treasure", "max_tokens": 32, "temperature": 0}


@pytest.fixture(scope="module")
def client(module_server):  # type: ignore[no-untyped-def]
    return module_server.client()


@pytest.fixture(scope="module")
def fn(tiny_assets, client):  # type: ignore[no-untyped-def]
    deploy(client, "streamer", tiny_assets.zip(tiny_assets.adapter_a, {"handler.py": STREAM_HANDLER}))
    invoke(client, "streamer", {"prompt": "warm", "max_tokens": 1})  # cold start out of the way
    return "streamer"


def _stream(client, name: str, event: dict, **kw) -> tuple[dict, list[dict], list[float]]:  # type: ignore[no-untyped-def]
    """(response, events, arrival time of each event after the call started)."""
    t0 = time.perf_counter()
    resp = client.invoke_with_response_stream(FunctionName=name, Payload=json.dumps(event), **kw)
    events, times = [], []
    for ev in resp["EventStream"]:
        events.append(ev)
        times.append(time.perf_counter() - t0)
    return resp, events, times


def _text(events: list[dict]) -> str:
    return b"".join(e["PayloadChunk"]["Payload"] for e in events if "PayloadChunk" in e).decode()


def test_tokens_stream_and_match_the_buffered_text(client, fn) -> None:  # type: ignore[no-untyped-def]
    _, buffered = invoke(client, fn, GREEDY)
    resp, events, _ = _stream(client, fn, GREEDY)
    assert resp["StatusCode"] == 200 and resp["ExecutedVersion"] == "$LATEST"
    assert resp["ResponseStreamContentType"] == "application/vnd.amazon.eventstream"
    assert events[-1] == {"InvokeComplete": {}}
    assert all("PayloadChunk" in e for e in events[:-1])
    assert len(events) - 1 > 5                        # token by token, not one blob
    assert _text(events) == buffered["text"]


def test_first_piece_arrives_while_the_function_still_runs(client, fn) -> None:  # type: ignore[no-untyped-def]
    _, events, times = _stream(client, fn, {"mode": "slow", "sleep": 2.0})
    assert _text(events) == "first second"
    assert times[0] < 1.5 and times[1] - times[0] > 1.5, times


def test_error_after_the_first_piece_is_in_invoke_complete(client, fn) -> None:  # type: ignore[no-untyped-def]
    _, events, _ = _stream(client, fn, {"mode": "fail"})
    assert _text(events) == "partial "
    assert events[-1] == {"InvokeComplete": {"ErrorCode": "ValueError", "ErrorDetails": "broke mid-stream"}}
    _, events, _ = _stream(client, fn, {"mode": "early"})
    assert events == [{"InvokeComplete": {"ErrorCode": "KeyError", "ErrorDetails": "'nothing streamed'"}}]


def test_crash_mid_stream_is_an_exit_error_and_the_next_call_works(client, fn) -> None:  # type: ignore[no-untyped-def]
    _, events, _ = _stream(client, fn, {"mode": "crash"})
    assert _text(events) == "partial "
    complete = events[-1]["InvokeComplete"]
    assert complete["ErrorCode"] == "Runtime.ExitError" and "exit status 3" in complete["ErrorDetails"]
    _, events, _ = _stream(client, fn, {"mode": "dict"})     # a fresh instance
    assert json.loads(_text(events)) == {"answer": 42} and events[-1] == {"InvokeComplete": {}}


def test_items_of_any_type_are_streamed(client, fn) -> None:  # type: ignore[no-untyped-def]
    _, events, _ = _stream(client, fn, {"mode": "bytes"})
    chunks = [e["PayloadChunk"]["Payload"] for e in events if "PayloadChunk" in e]
    assert chunks == [b"\x00\x01", b"text", b'{"k": 1}']


def test_invocation_is_recorded_with_usage(client, fn, module_server) -> None:  # type: ignore[no-untyped-def]
    resp, _, _ = _stream(client, fn, {**GREEDY, "max_tokens": 8})
    rid = resp["ResponseMetadata"]["RequestId"]
    rec = invocation_record(module_server, rid)
    assert rec["status"] == "success" and rec["completion_tokens"] and rec["completion_tokens"] <= 8
    assert rec["prompt_tokens"] and rec["ttft_ms"] and rec["ttft_ms"] > 0


def test_refusals_come_before_the_stream_as_aws_errors(client, fn) -> None:  # type: ignore[no-untyped-def]
    ex = client.exceptions
    cases = [
        (ex.ResourceNotFoundException, dict(FunctionName="no-such-fn", Payload=b"{}")),
        (ex.InvalidRequestContentException, dict(FunctionName=fn, Payload=b"{not json")),
        (ex.RequestTooLargeException, dict(FunctionName=fn, Payload=b'"' + b"x" * (6 * 1024 * 1024) + b'"')),
        (ex.InvalidParameterValueException, dict(FunctionName=fn, Payload=b"{}", InvocationType="Event")),
        (ex.ResourceNotFoundException, dict(FunctionName=fn, Payload=b"{}", Qualifier="no-such-alias")),
    ]
    for exc_type, kwargs in cases:
        with pytest.raises(exc_type) as info:
            client.invoke_with_response_stream(**kwargs)
        assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] < 500
    dry = client.invoke_with_response_stream(FunctionName=fn, Payload=b"{}", InvocationType="DryRun")
    assert dry["StatusCode"] == 204


def test_the_first_token_leaves_long_before_the_generation_ends(client, fn, module_server) -> None:  # type: ignore[no-untyped-def]
    """The mechanism behind a low streamed TTFT (bench/streaming_ttft.py measures the client's
    view, which on a busy machine says more about the machine): the first chunk is sent when
    the first token exists, so the server's own record of a 64-token generation has its first
    token early in the invocation, and the client got it as one of many chunks."""
    event = {"prompt": "the quick brown fox", "max_tokens": 64, "temperature": 0, "ignore_eos": True}
    _stream(client, fn, event)     # the instance's first generation sets up its kernels: not this test's subject
    resp, events, _ = _stream(client, fn, event)
    rec = invocation_record(module_server, resp["ResponseMetadata"]["RequestId"])
    assert rec["status"] == "success" and rec["completion_tokens"] == 64, rec
    assert sum(1 for e in events if "PayloadChunk" in e) > 5
    # one prefill against 64 forward passes: whatever the load, both are slowed alike
    assert 0 < rec["ttft_ms"] < 0.4 * rec["duration_ms"], rec


def test_log_tail_and_reserved_concurrency(client, fn) -> None:  # type: ignore[no-untyped-def]
    import base64

    resp, events, _ = _stream(client, fn, {"mode": "dict"}, LogType="Tail")
    log = base64.b64decode(events[-1]["InvokeComplete"]["LogResult"]).decode()
    rid = resp["ResponseMetadata"]["RequestId"]
    assert f"START RequestId: {rid}" in log and f"REPORT RequestId: {rid}" in log
    if not hasattr(client, "put_function_concurrency"):
        return
    client.put_function_concurrency(FunctionName=fn, ReservedConcurrentExecutions=0)
    try:
        with pytest.raises(client.exceptions.TooManyRequestsException):
            client.invoke_with_response_stream(FunctionName=fn, Payload=b'{"mode": "dict"}')
    finally:
        client.delete_function_concurrency(FunctionName=fn)
    _, events, _ = _stream(client, fn, {"mode": "dict"})
    assert events[-1] == {"InvokeComplete": {}}


def test_cli_invoke_stream(client, fn, module_server) -> None:  # type: ignore[no-untyped-def]
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    def slfaas(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "slfaas.cli.main", *args, "--endpoint", module_server.url],
                              cwd=ROOT, env=os.environ, capture_output=True, text=True, timeout=120)

    streamed = slfaas("invoke", fn, "--prompt", GREEDY["prompt"], "--max-tokens", "12", "--stream")
    buffered = slfaas("invoke", fn, "--prompt", GREEDY["prompt"], "--max-tokens", "12", "--text")
    assert streamed.returncode == 0 and buffered.returncode == 0, streamed.stderr + buffered.stderr
    assert streamed.stdout == buffered.stdout
    failed = slfaas("invoke", fn, "--payload", '{"mode": "fail"}', "--stream")
    assert failed.returncode == 1 and "function error (ValueError): broke mid-stream" in failed.stderr
