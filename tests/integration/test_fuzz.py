"""Spec-driven fuzzing of the live API (schemathesis-style, with hypothesis): random requests
built from botocore's Lambda service model (every operation's method and path, its URI,
query-string and header parameters, and a JSON body whose members are sometimes the modelled
type and sometimes any JSON at all), raw garbage bodies, and the OpenAI endpoints. Invariants:
no response is a 5xx, every Lambda error carries ``x-amzn-ErrorType`` and a JSON body, every
OpenAI error is ``{"error": ...}``, every stream ends with InvokeComplete, and the server lives.

Bounded for the suite (``SLFAAS_FUZZ_SECONDS``, default 60). A longer run (README, "Fuzzing")::

    SLFAAS_FUZZ_SECONDS=600 python -m pytest -q -s tests/integration/test_fuzz.py
"""
from __future__ import annotations

import base64
import http.client
import json
import os
import time
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import pytest

from tests.conftest import deploy
from tests.integration._util import assert_healthy

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

FUZZ_SECONDS = float(os.environ.get("SLFAAS_FUZZ_SECONDS", "60"))
FUZZ_EXAMPLES = int(os.environ.get("SLFAAS_FUZZ_EXAMPLES", "100000"))
CHUNK = 200
FN = "fuzz-fn"
# Validates the event like the built-in handler (that code is fuzzed too) but generates only
# short outputs, so a random max_tokens of thousands does not stall the run.
HANDLER = '''
from slfaas.functions.events import parse_event


def handler(event, context):
    req = parse_event(event)
    if req.max_tokens > 4 or req.messages:   # validated; skip the generation
        if context.response_stream:
            return iter(["skipped"])
        return {"text": "", "finish_reason": "length", "usage": {"prompt_tokens": 0, "completion_tokens": 0}}
    return context.stream_event(event) if context.response_stream else context.generate_event(event)
'''
# destructive operations never get the name of the function the other operations exercise
_DESTRUCTIVE = {"DeleteFunction"}

_json_scalars = (st.none() | st.booleans() | st.integers(-2**63, 2**64) | st.floats(allow_nan=True)
                 | st.text(max_size=40))
any_json = st.recursive(_json_scalars, lambda inner: st.lists(inner, max_size=4)
                        | st.dictionaries(st.text(max_size=12), inner, max_size=4), max_leaves=12)
weird_text = st.one_of(
    st.text(max_size=80),
    st.sampled_from(["", "$LATEST", "1", "0", "-1", "99999999999999999999", "a" * 65, "a" * 200, "..", "%", "%zz",
                     "%00", "../../etc/passwd", "arn:aws:lambda:us-east-1:000000000000:function:x:y:z", "😀",
                     "\u202e", "null", "{}", "[]"]),
)
names = st.one_of(st.just(FN), st.just(f"{FN}:$LATEST"), st.just(f"{FN}:1"),
                  st.just(f"arn:aws:lambda:us-east-1:000000000000:function:{FN}"), weird_text)


def _model() -> Any:
    import botocore.session
    return botocore.session.get_session().get_service_model("lambda")


def _value(shape: Any, depth: int = 0) -> st.SearchStrategy:
    """A value of ``shape``'s modelled type, or (often) any JSON value at all."""
    t = shape.type_name
    if depth > 3:
        return st.none()
    if t == "structure":
        typed = st.fixed_dictionaries({}, optional={k: _value(m, depth + 1) for k, m in shape.members.items()})
    elif t == "list":
        typed = st.lists(_value(shape.member, depth + 1), max_size=3)
    elif t == "map":
        typed = st.dictionaries(weird_text, _value(shape.value, depth + 1), max_size=3)
    elif t == "string":
        enum = list(getattr(shape, "enum", []) or [])
        typed = st.sampled_from(enum) | weird_text if enum else weird_text
    elif t in ("integer", "long"):
        typed = st.sampled_from([0, 1, -1, 3, 128, 900, 10240, 2**31, 10**30]) | st.integers()
    elif t == "boolean":
        typed = st.booleans()
    elif t in ("float", "double"):
        typed = st.floats(allow_nan=False, allow_infinity=False)
    elif t == "blob":
        typed = st.binary(max_size=48).map(lambda b: base64.b64encode(b).decode()) | weird_text
    else:
        typed = weird_text
    return st.one_of(typed, typed, typed, any_json)


def _scalar_text(shape: Any) -> st.SearchStrategy:
    """A URI/query/header parameter: the modelled kind of value as text, or anything."""
    if shape.type_name in ("integer", "long"):
        return st.integers(-5, 20000).map(str) | weird_text
    if shape.type_name == "boolean":
        return st.sampled_from(["true", "false", "yes", ""])
    enum = list(getattr(shape, "enum", []) or [])
    return (st.sampled_from(enum) | weird_text) if enum else weird_text


def _header_safe(value: str) -> str:
    return "".join(c for c in value if 32 <= ord(c) < 127)


@st.composite
def lambda_requests(draw: Any, ops: list) -> tuple[str, str, dict, bytes]:
    name, op = draw(st.sampled_from(ops))
    path = op.http["requestUri"]
    query: list[tuple[str, str]] = []
    headers: dict[str, str] = {}
    body_members = {}
    raw_payload = op.input_shape.serialization.get("payload") if op.input_shape is not None else None
    members = op.input_shape.members if op.input_shape is not None else {}
    for mname, shape in members.items():
        loc = shape.serialization.get("location")
        wire = shape.serialization.get("name", mname)
        if loc == "uri":
            value = draw(names if mname == "FunctionName" and name not in _DESTRUCTIVE else weird_text)
            greedy = "{" + wire + "+}" in path
            path = path.replace("{" + wire + "+}", quote(value, safe="/" if greedy else ""))
            path = path.replace("{" + wire + "}", quote(value, safe=""))
        elif loc == "querystring":
            if draw(st.booleans()):
                query.append((wire, draw(_scalar_text(shape))))
        elif loc == "header":
            if draw(st.booleans()):
                headers[wire] = _header_safe(draw(_scalar_text(shape)))
        elif mname != raw_payload:
            body_members[mname] = shape
    if "?" in path:   # a literal query in the request URI (e.g. ?find-by-url)
        path, literal = path.split("?", 1)
        query.insert(0, tuple(literal.split("=", 1)) if "=" in literal else (literal, ""))  # type: ignore[arg-type]
    kind = draw(st.sampled_from(["modelled", "modelled", "json", "garbage", "empty"]))
    if raw_payload:
        event = st.fixed_dictionaries({}, optional={"prompt": weird_text, "max_tokens": st.integers(-2, 10**6),
                                                    "temperature": any_json, "top_p": any_json, "seed": any_json,
                                                    "stop": any_json, "messages": any_json,
                                                    "return_tokens": any_json})
        body = json.dumps(draw(event | any_json)).encode() if kind != "garbage" else draw(st.binary(max_size=64))
    elif kind == "modelled" and body_members:
        fields = draw(st.fixed_dictionaries({}, optional={k: _value(s) for k, s in body_members.items()}))
        body = json.dumps(fields).encode()
    elif kind == "json":
        body = json.dumps(draw(any_json)).encode()
    elif kind == "garbage":
        body = draw(st.binary(max_size=64) | st.sampled_from([b"{", b"[1,", b'{"a": NaN}', b"\xff\xfe", b"null"]))
    else:
        body = b""
    if query:
        path += "?" + urlencode(query, quote_via=quote)
    return op.http["method"], path, headers, body


@st.composite
def openai_requests(draw: Any) -> tuple[str, str, dict, bytes]:
    route = draw(st.sampled_from(["/v1/completions", "/v1/chat/completions", "/v1/models", "/v1/models/"]))
    if route == "/v1/models":
        return "GET", route, {}, b""
    if route == "/v1/models/":
        return "GET", route + quote(draw(names), safe=":"), {}, b""
    fields = {
        "prompt": weird_text | any_json, "max_tokens": st.integers(-1, 4) | any_json,
        "temperature": any_json, "top_p": any_json, "n": any_json, "stop": any_json, "seed": any_json,
        "stream": st.booleans() | any_json, "stream_options": any_json, "logprobs": any_json,
        "max_completion_tokens": st.integers(-1, 4) | any_json,
        "messages": st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant", "x"])
                                                    | any_json, "content": weird_text | any_json}), max_size=3)
        | any_json,
    }
    body = draw(st.fixed_dictionaries({"model": st.just(FN) | names | any_json}, optional=fields) | any_json)
    return "POST", route, {"Content-Type": "application/json"}, json.dumps(body).encode()


def _send(url: str, method: str, path: str, headers: dict, body: bytes) -> tuple[int, dict, bytes]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=120)
    try:
        conn.request(method, path, body=body or None, headers=headers)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def _check(method: str, path: str, status: int, headers: dict, body: bytes) -> None:
    where = f"{method} {path} -> {status}: {body[:300]!r}"
    assert status < 500, where
    if path.startswith("/v1"):
        if status >= 400:
            assert "error" in json.loads(body), where
        elif headers.get("content-type", "").startswith("text/event-stream"):
            assert body.rstrip().endswith(b"data: [DONE]"), where
        return
    if status >= 400:
        assert headers.get("x-amzn-errortype"), where
        assert isinstance(json.loads(body), dict), where
    if "response-streaming-invocations" in path and status == 200:
        from botocore.eventstream import EventStreamBuffer
        buf = EventStreamBuffer()
        buf.add_data(body)
        events = [m.headers.get(":event-type") for m in buf]
        assert events and events[-1] == "InvokeComplete", where


@pytest.fixture(scope="module")
def fuzz_target(module_server, tiny_assets):  # type: ignore[no-untyped-def]
    deploy(module_server.client(), FN, tiny_assets.zip(tiny_assets.adapter_a, {"handler.py": HANDLER}), Timeout=30)
    return module_server


@pytest.mark.timeout(FUZZ_SECONDS + 300)   # the budget plus the server, the cold start and a round's overrun
def test_fuzz_api_no_5xx_no_crash(fuzz_target) -> None:  # type: ignore[no-untyped-def]
    model = _model()
    ops = [(n, model.operation_model(n)) for n in model.operation_names]
    requests = st.one_of(lambda_requests(ops), lambda_requests(ops), lambda_requests(ops), openai_requests())
    deadline = time.monotonic() + FUZZ_SECONDS
    stats: dict = {"sent": 0, "by_status": {}}

    def one(req: tuple[str, str, dict, bytes]) -> None:
        if time.monotonic() > deadline:
            return
        method, path, headers, body = req
        status, resp_headers, resp_body = _send(fuzz_target.url, method, path, headers, body)
        stats["sent"] += 1
        stats["by_status"][status] = stats["by_status"].get(status, 0) + 1
        _check(method, path, status, resp_headers, resp_body)

    # hypothesis has no time budget: run it in rounds of CHUNK examples (each a fresh random
    # run, shrinking a failure within its round) until the time or the example count is spent
    chunk = settings(max_examples=CHUNK, deadline=None, database=None, suppress_health_check=list(HealthCheck),
                     phases=[hypothesis.Phase.generate, hypothesis.Phase.shrink])(given(requests)(one))
    while time.monotonic() < deadline and stats["sent"] < FUZZ_EXAMPLES:
        chunk()
    print(f"\nfuzz: {stats['sent']} requests in a {FUZZ_SECONDS:.0f} s budget; statuses {sorted(stats['by_status'].items())}")
    assert stats["sent"] > 100
    assert_healthy(fuzz_target)
    # and the function still works after all that
    resp = fuzz_target.client().invoke(FunctionName=FN, Payload=json.dumps({"prompt": "hi", "max_tokens": 2}))
    assert resp["StatusCode"] == 200
