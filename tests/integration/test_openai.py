"""The OpenAI-compatible endpoint with the official ``openai`` client against a live server:
models, completions and chat completions, buffered and streamed, ``name:qualifier`` models,
and OpenAI-shaped errors."""
from __future__ import annotations

import json

import pytest

from slfaas.functions.chat import simple_template
from tests.conftest import deploy
from tests.integration._util import invoke, raw_http

openai = pytest.importorskip("openai")

FAILING_HANDLER = '''
def handler(event, context):
    if event.get("prompt") == "fail":
        raise RuntimeError("the handler gave up")
    return context.stream_event(event) if context.response_stream else context.generate_event(event)
'''


@pytest.fixture(scope="module")
def fn(tiny_assets, module_server):  # type: ignore[no-untyped-def]
    client = module_server.client()
    deploy(client, "chatty", tiny_assets.zip(tiny_assets.adapter_a, {"handler.py": FAILING_HANDLER}))
    return "chatty"


@pytest.fixture(scope="module")
def oai(module_server):  # type: ignore[no-untyped-def]
    return openai.OpenAI(base_url=module_server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def test_models(oai, fn) -> None:  # type: ignore[no-untyped-def]
    ids = [m.id for m in oai.models.list()]
    assert fn in ids
    model = oai.models.retrieve(fn)
    assert model.id == fn and model.owned_by == "slfaas" and model.object == "model"
    assert oai.models.retrieve(f"{fn}:$LATEST").id == f"{fn}:$LATEST"
    with pytest.raises(openai.NotFoundError):
        oai.models.retrieve("no-such-function")


def test_completion_matches_the_lambda_invoke(oai, fn, module_server) -> None:  # type: ignore[no-untyped-def]
    _, lam = invoke(module_server.client(), fn, {"prompt": "ahoy matey", "max_tokens": 12, "temperature": 0})
    done = oai.completions.create(model=fn, prompt="ahoy matey", max_tokens=12, temperature=0)
    assert done.object == "text_completion" and done.model == fn
    assert done.choices[0].text == lam["text"]
    assert done.choices[0].finish_reason == lam["finish_reason"]
    assert done.usage.completion_tokens == lam["usage"]["completion_tokens"]
    assert done.usage.total_tokens == done.usage.prompt_tokens + done.usage.completion_tokens

    pieces, finish = [], None
    for chunk in oai.completions.create(model=fn, prompt="ahoy matey", max_tokens=12, temperature=0, stream=True):
        pieces.append(chunk.choices[0].text)
        finish = chunk.choices[0].finish_reason or finish
    assert "".join(pieces) == lam["text"] and finish == lam["finish_reason"]
    assert len([p for p in pieces if p]) > 1     # streamed in pieces


def test_chat_uses_the_template_and_streams(oai, fn, module_server) -> None:  # type: ignore[no-untyped-def]
    messages = [{"role": "system", "content": "You are a pirate."}, {"role": "user", "content": "the treasure?"}]
    # the tiny tokenizer has no chat template: the documented simple one is applied
    prompt = simple_template([(m["role"], m["content"]) for m in messages])
    _, lam = invoke(module_server.client(), fn, {"prompt": prompt, "max_tokens": 10, "temperature": 0})
    done = oai.chat.completions.create(model=fn, messages=messages, max_tokens=10, temperature=0)
    assert done.object == "chat.completion"
    assert done.choices[0].message.role == "assistant"
    assert done.choices[0].message.content == lam["text"]
    assert done.usage.prompt_tokens == lam["usage"]["prompt_tokens"]

    stream = oai.chat.completions.create(model=f"{fn}:$LATEST", messages=messages, max_tokens=10, temperature=0,
                                         stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == lam["text"]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == lam["finish_reason"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == lam["usage"]["completion_tokens"]
    assert len({c.id for c in chunks}) == 1


def test_text_parts_and_max_completion_tokens(oai, fn) -> None:  # type: ignore[no-untyped-def]
    done = oai.chat.completions.create(
        model=fn, messages=[{"role": "user", "content": [{"type": "text", "text": "hello "},
                                                          {"type": "text", "text": "world"}]}],
        max_completion_tokens=3, temperature=0)
    assert done.usage.completion_tokens <= 3


def test_errors_are_openai_shaped(oai, fn, module_server) -> None:  # type: ignore[no-untyped-def]
    bad_calls = [
        lambda: oai.completions.create(model=fn, prompt="x", max_tokens=0),
        lambda: oai.completions.create(model=fn, prompt="x", n=2),
        lambda: oai.completions.create(model=fn, prompt="x", logprobs=2),
        lambda: oai.completions.create(model=fn, prompt=[1, 2, 3]),
        lambda: oai.completions.create(model=fn, prompt="x", temperature=3),
        lambda: oai.chat.completions.create(model=fn, messages=[]),
        lambda: oai.chat.completions.create(model=fn, messages=[{"role": "wizard", "content": "x"}]),
        lambda: oai.chat.completions.create(model=fn, messages=[{"role": [], "content": "x"}]),   # found by fuzzing
        lambda: oai.chat.completions.create(model=fn, messages=[{"role": "user", "content": "x"}], stop=[""]),
    ]
    for call in bad_calls:
        with pytest.raises(openai.BadRequestError) as info:
            call()
        assert info.value.body and info.value.body.get("message")
    with pytest.raises(openai.NotFoundError):
        oai.completions.create(model="no-such-function", prompt="x")
    with pytest.raises(openai.NotFoundError):
        oai.completions.create(model=f"{fn}:no-such-alias", prompt="x")
    with pytest.raises(openai.InternalServerError) as info:
        oai.completions.create(model=fn, prompt="fail", max_tokens=2)
    assert "the handler gave up" in str(info.value)
    with pytest.raises(openai.APIError, match="the handler gave up"):
        list(oai.completions.create(model=fn, prompt="fail", max_tokens=2, stream=True))
    for body in (b"{not json", b"[]", json.dumps({"prompt": "x"}).encode(), b""):
        status, _, raw = raw_http(module_server.url, "POST", "/v1/completions", body)
        assert status == 400 and "error" in json.loads(raw)
