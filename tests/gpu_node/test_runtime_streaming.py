"""Lambda's streaming response mode through the node's Runtime API: chunks reach the node as the
runtime writes them, errors after the first chunk travel in trailers, and a streamed response
to a buffered invoke is collected into the payload."""
from __future__ import annotations

import dataclasses
import json
import queue
import socket
import tempfile
import threading
import time
from pathlib import Path

import pytest

from slfaas.functions.runtime_client import RuntimeClient
from slfaas.gpu_node.lifecycle.instance import Instance
from slfaas.gpu_node.streaming import ResponseStream
from slfaas.gpu_node.runtime_api import RuntimeApiServer
from tests.gpu_node.fakes import make_request, make_spec


@pytest.fixture
def served():  # type: ignore[no-untyped-def]
    sock_dir = Path(tempfile.mkdtemp(prefix="slfaas-st-"))
    inst = Instance("inst-s", make_spec(Path("/nonexistent"), Path("/nonexistent"), timeout_s=10))
    api = RuntimeApiServer(sock_dir / "i.sock", inst).start()
    yield inst, RuntimeClient(str(sock_dir / "i.sock")), sock_dir / "i.sock"
    api.close()
    sock_dir.rmdir()


def _start(inst: Instance, stream: bool, sink=None):  # type: ignore[no-untyped-def]
    req = dataclasses.replace(make_request(inst.function), response_stream=stream)
    box: dict = {}

    def run() -> None:
        box["outcome"], _ = inst.run(req, False, time.time(), sink=sink)

    t = threading.Thread(target=run)
    t.start()
    return req, box, t


def _read_all(sock: socket.socket) -> bytes:
    """Everything the server answers until it closes (or goes quiet for a second)."""
    sock.settimeout(1)
    out = b""
    try:
        while data := sock.recv(4096):
            out += data
    except TimeoutError:
        pass
    sock.close()
    return out


def test_chunks_reach_the_sink_before_the_stream_ends(served) -> None:  # type: ignore[no-untyped-def]
    inst, client, _ = served
    chunks: queue.Queue = queue.Queue()
    req, box, t = _start(inst, True, chunks.put)
    inv = client.next()
    assert inv.response_stream is True and inv.request_id == req.request_id
    stream = client.respond_stream(inv.request_id)
    for piece in (b"ahoy", b" mat", "ëy".encode()):
        stream.write(piece)
        assert chunks.get(timeout=5) == piece   # handed on while the response is still open
    assert "outcome" not in box
    stream.close(metrics={"prompt_tokens": 3, "completion_tokens": 3, "ttft_ms": 1.5, "finish_reason": "length"})
    t.join(5)
    outcome = box["outcome"]
    assert outcome.error_type is None and outcome.payload == b""
    assert outcome.metrics == {"prompt_tokens": 3, "completion_tokens": 3, "ttft_ms": 1.5, "finish_reason": "length"}


def test_buffered_invoke_of_a_streamed_response_gets_the_whole_body(served) -> None:  # type: ignore[no-untyped-def]
    inst, client, _ = served
    _req, box, t = _start(inst, False)
    inv = client.next()
    assert inv.response_stream is False
    stream = client.respond_stream(inv.request_id)
    stream.write(b'{"a": ')
    stream.write(b"1}")
    stream.close()
    t.join(5)
    assert box["outcome"].payload == b'{"a": 1}' and box["outcome"].error_type is None


def test_error_after_streaming_began_comes_in_the_trailers(served) -> None:  # type: ignore[no-untyped-def]
    inst, client, _ = served
    chunks: queue.Queue = queue.Queue()
    _req, box, t = _start(inst, True, chunks.put)
    inv = client.next()
    stream = client.respond_stream(inv.request_id)
    stream.write(b"partial")
    stream.close(error={"errorMessage": "boom", "errorType": "ValueError", "stackTrace": []})
    t.join(5)
    outcome = box["outcome"]
    assert chunks.get(timeout=1) == b"partial"
    assert outcome.error_type == "ValueError"
    assert json.loads(outcome.payload)["errorMessage"] == "boom"


def test_runtime_dying_mid_stream_fails_the_invocation(served) -> None:  # type: ignore[no-untyped-def]
    inst, client, sock_path = served
    chunks: queue.Queue = queue.Queue()
    _req, box, t = _start(inst, True, chunks.put)
    inv = client.next()
    raw = socket.socket(socket.AF_UNIX)
    raw.connect(str(sock_path))
    raw.sendall(f"POST /2018-06-01/runtime/invocation/{inv.request_id}/response HTTP/1.1\r\nHost: x\r\n"
                f"Lambda-Runtime-Function-Response-Mode: streaming\r\nTransfer-Encoding: chunked\r\n\r\n"
                f"3\r\nabc\r\n5\r\nde".encode())
    assert chunks.get(timeout=5) == b"abc"
    raw.close()   # cut short: no terminal chunk
    time.sleep(0.2)
    assert "outcome" not in box    # not finished by the broken stream itself...
    inst.on_exit(-9)               # ...but by the process exit, as any crash
    t.join(5)
    assert box["outcome"].error_type == "Runtime.ExitError"


def test_streaming_to_an_unknown_request_is_refused(served) -> None:  # type: ignore[no-untyped-def]
    _inst, _client, sock_path = served
    raw = socket.socket(socket.AF_UNIX)
    raw.connect(str(sock_path))
    raw.sendall(b"POST /2018-06-01/runtime/invocation/nope/response HTTP/1.1\r\nHost: x\r\n"
                b"Lambda-Runtime-Function-Response-Mode: streaming\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"3\r\nabc\r\n")
    reply = _read_all(raw)
    assert reply.startswith(b"HTTP/1.1 400") and b"InvalidRequestID" in reply


def test_malformed_error_trailer_still_fails_with_its_type(served) -> None:  # type: ignore[no-untyped-def]
    inst, client, sock_path = served
    _req, box, t = _start(inst, True, lambda _c: None)
    inv = client.next()
    raw = socket.socket(socket.AF_UNIX)
    raw.connect(str(sock_path))
    raw.sendall(f"POST /2018-06-01/runtime/invocation/{inv.request_id}/response HTTP/1.1\r\nHost: x\r\n"
                f"Lambda-Runtime-Function-Response-Mode: streaming\r\nTransfer-Encoding: chunked\r\n\r\n"
                f"1\r\nx\r\n0\r\nLambda-Runtime-Function-Error-Type: Handler.Crash\r\n"
                f"Lambda-Runtime-Function-Error-Body: !!notbase64\r\n\r\n".encode())
    assert _read_all(raw).startswith(b"HTTP/1.1 202")
    t.join(5)
    assert box["outcome"].error_type == "Handler.Crash"
    assert json.loads(box["outcome"].payload)["errorType"] == "Handler.Crash"


def test_response_stream_iterates_until_the_invocation_ends() -> None:
    stream = ResponseStream()
    threading.Thread(target=stream.run, args=(lambda: (stream.put(b"a"), stream.put(b"b"),
                                                        "result")[-1],)).start()
    assert list(stream) == [b"a", b"b"]
    assert stream.result == "result" and stream.error is None

    failing = ResponseStream()

    def boom():  # type: ignore[no-untyped-def]
        raise RuntimeError("node broke")

    failing.run(boom)
    assert list(failing) == [] and isinstance(failing.error, RuntimeError)



def test_buffered_invoke_keeps_the_6mb_limit_for_streamed_responses(served) -> None:  # type: ignore[no-untyped-def]
    from slfaas.functions.runtime_client import NodeGone

    inst, client, _ = served
    _req, box, t = _start(inst, False)
    inv = client.next()
    stream = client.respond_stream(inv.request_id)
    with pytest.raises(NodeGone):
        for _ in range(20):
            stream.write(b"x" * (1024 * 1024))
        stream.close()
    t.join(5)
    assert box["outcome"].error_type == "Function.ResponseSizeTooLarge"
