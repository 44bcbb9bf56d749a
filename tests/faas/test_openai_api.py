"""OpenAI request parsing (pure functions) and the endpoint over a fake service (Flask test client)."""
from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
from flask import Flask

from slfaas.errors import NotFound, TooManyRequests
from slfaas.faas.api import openai_api
from slfaas.faas.api.openai_api import BadRequest, _common, _messages, _prompt


def test_common_fields_become_the_event() -> None:
    model, event, stream, usage = _common({"model": "f:prod", "max_tokens": 5, "temperature": 0, "top_p": 0.5,
                                           "stop": "x", "seed": 7, "stream": True,
                                           "stream_options": {"include_usage": True}}, 16, ("max_tokens",))
    assert (model, stream, usage) == ("f:prod", True, True)
    assert event == {"max_tokens": 5, "temperature": 0.0, "top_p": 0.5, "stop": ["x"], "seed": 7}
    _, event, stream, usage = _common({"model": "f"}, 16, ("max_tokens",))
    assert event == {"max_tokens": 16, "temperature": 1.0, "top_p": 1.0} and not stream and not usage
    _, event, _, _ = _common({"model": "f", "max_completion_tokens": 3, "max_tokens": 9}, 256,
                             ("max_completion_tokens", "max_tokens"))
    assert event["max_tokens"] == 3


@pytest.mark.parametrize("body", [
    {}, {"model": ""}, {"model": 3}, {"model": "f", "n": 2}, {"model": "f", "max_tokens": 0},
    {"model": "f", "max_tokens": True}, {"model": "f", "max_tokens": 10**6}, {"model": "f", "temperature": "hot"},
    {"model": "f", "temperature": 2.5}, {"model": "f", "top_p": 0}, {"model": "f", "stop": ["a"] * 5},
    {"model": "f", "stop": [""]}, {"model": "f", "stop": 3}, {"model": "f", "seed": 1.5}, {"model": "f", "stream": "yes"},
    {"model": "f", "stream_options": []}, {"model": "f", "logprobs": 3}, {"model": "f", "echo": True},
    {"model": "f", "best_of": 2}, {"model": "f", "tools": [{"type": "function"}]},
    {"model": "f", "temperature": float("nan")},
])
def test_common_rejects(body: dict) -> None:
    with pytest.raises(BadRequest):
        _common(body, 16, ("max_tokens",))


def test_neutral_values_of_unsupported_parameters_pass() -> None:
    _common({"model": "f", "logprobs": False, "echo": False, "best_of": 1, "tools": [], "n": 1,
             "logit_bias": {}}, 16, ("max_tokens",))


def test_prompt_and_messages() -> None:
    assert _prompt({"prompt": "hi"}) == "hi" and _prompt({"prompt": ["hi"]}) == "hi"
    for bad in ({"prompt": ["a", "b"]}, {"prompt": [1, 2]}, {}, {"prompt": None}):
        with pytest.raises(BadRequest):
            _prompt(bad)
    assert _messages({"messages": [{"role": "user", "content": [{"type": "text", "text": "a"},
                                                                {"type": "text", "text": "b"}]},
                                   {"role": "assistant", "content": None}]}) == \
        [{"role": "user", "content": "ab"}, {"role": "assistant", "content": ""}]
    for bad in ([], "hi", [{"role": "user"}], [{"role": [], "content": "x"}], [{"role": {"a": 1}, "content": "x"}],
                [{"role": "user", "content": [{"type": "image_url"}]}], [{"role": "robot", "content": "x"}], [3]):
        with pytest.raises(BadRequest):
            _messages({"messages": bad})


@dataclass
class _Outcome:
    payload: bytes
    function_error: str | None = None
    request_id: str = "rid-1"


class _FakeService:
    def __init__(self, outcome: object):
        self.outcome = outcome
        self.calls: list = []

    def invoke(self, ref, qualifier, payload, client_gone=None):  # type: ignore[no-untyped-def]
        self.calls.append((ref, qualifier, json.loads(payload)))
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return self.outcome


def _app(service: object):  # type: ignore[no-untyped-def]
    app = Flask("t")
    app.extensions["slfaas.service"] = service
    app.register_blueprint(openai_api.bp)
    return app.test_client()


def test_completion_over_a_fake_service() -> None:
    result = {"text": "ahoy", "finish_reason": "length", "usage": {"prompt_tokens": 2, "completion_tokens": 1}}
    svc = _FakeService(_Outcome(json.dumps(result).encode()))
    resp = _app(svc).post("/v1/chat/completions", json={"model": "f:1", "messages": [{"role": "user", "content": "x"}],
                                                        "max_tokens": 4, "temperature": 0})
    assert resp.status_code == 200
    body = resp.get_json()
    assert body["id"] == "chatcmpl-rid-1" and body["choices"][0]["message"] == {"role": "assistant", "content": "ahoy"}
    assert body["usage"] == {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3}
    assert svc.calls == [("f:1", None, {"max_tokens": 4, "temperature": 0.0, "top_p": 1.0,
                                        "messages": [{"role": "user", "content": "x"}]})]


@pytest.mark.parametrize("outcome, status, code", [
    (NotFound("Function not found"), 404, "model_not_found"),
    (TooManyRequests("busy", reason="ReservedFunctionConcurrentInvocationLimitExceeded"), 429,
     "ReservedFunctionConcurrentInvocationLimitExceeded"),
    (_Outcome(b'{"errorMessage": "boom", "errorType": "ValueError"}', "Unhandled"), 500, "ValueError"),
    (_Outcome(b'{"not": "a completion"}'), 500, "InvalidFunctionResult"),
])
def test_errors_over_a_fake_service(outcome: object, status: int, code: str) -> None:
    resp = _app(_FakeService(outcome)).post("/v1/completions", json={"model": "f", "prompt": "x"})
    assert resp.status_code == status and resp.get_json()["error"]["code"] == code
    assert (resp.headers.get("Retry-After") is not None) == (status == 429)   # the openai client waits that long


def test_unknown_paths_under_v1_are_openai_shaped() -> None:
    client = _app(_FakeService(None))
    for method, path in (("GET", "/v1/nope"), ("GET", "/v1/models/"), ("GET", "/v1/completions")):
        resp = client.open(path, method=method)
        assert resp.status_code in (404, 405) and "error" in resp.get_json()
