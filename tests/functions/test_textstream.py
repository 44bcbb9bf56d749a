"""Streaming text: pieces joined equal the buffered text (multi-byte characters never split,
stop strings never leaked), chat prompts, and the ``messages`` event field."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import pytest

from slfaas.functions.chat import chat_prompt, simple_template
from slfaas.functions.events import InvalidEvent, parse_event
from slfaas.functions.textstream import _held_back, stream_text


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from transformers import AutoTokenizer

    from slfaas.testing.tinymodels import make_tokenizer

    out = tmp_path_factory.mktemp("tok")
    make_tokenizer(out)
    return AutoTokenizer.from_pretrained(str(out))


class FakeEngine:
    """Replays fixed token ids through the real tokenizer."""

    def __init__(self, tokenizer, ids: list[int]):  # type: ignore[no-untyped-def]
        self.tokenizer = tokenizer
        self.ids = ids
        self.eos_ids = frozenset({tokenizer.eos_token_id})
        self.last_prompt_tokens = 3
        self.last_prefill_ms = 1.0
        self.busy_entered = 0

    @contextmanager
    def busy(self):  # type: ignore[no-untyped-def]
        self.busy_entered += 1
        yield

    def stream(self, req):  # type: ignore[no-untyped-def]
        yield from self.ids[:req.max_tokens]


def _run(engine, event):  # type: ignore[no-untyped-def]
    gen = stream_text(engine, parse_event(event))
    pieces = []
    try:
        while True:
            pieces.append(next(gen))
    except StopIteration as stop:
        return pieces, stop.value


@pytest.mark.parametrize("text", [
    "ahoy matey, the sea is wide and the rum is gone!",
    "naïve café — déjà vu 日本語 🙂 done",     # characters spanning several byte-level tokens
])
def test_pieces_join_to_the_decoded_text(tokenizer, text: str) -> None:  # type: ignore[no-untyped-def]
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    engine = FakeEngine(tokenizer, ids)
    pieces, gen = _run(engine, {"prompt": "x", "max_tokens": len(ids)})
    assert "".join(pieces) == gen.text == tokenizer.decode(ids, skip_special_tokens=True)
    assert all(p and "\ufffd" not in p for p in pieces)
    assert gen.finish_reason == "length" and gen.completion_tokens == len(ids)
    assert engine.busy_entered == 1


def test_eos_ends_the_stream(tokenizer) -> None:  # type: ignore[no-untyped-def]
    ids = tokenizer("the quick", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id, 5, 6]
    pieces, gen = _run(FakeEngine(tokenizer, ids), {"prompt": "x", "max_tokens": 20})
    assert "".join(pieces) == gen.text == "the quick"
    assert gen.finish_reason == "stop" and gen.completion_tokens == len(ids) - 2


def test_ignore_eos_streams_past_eos(tokenizer) -> None:  # type: ignore[no-untyped-def]
    ids = tokenizer("the quick", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id, 5, 6]
    pieces, gen = _run(FakeEngine(tokenizer, ids), {"prompt": "x", "max_tokens": 20, "ignore_eos": True})
    assert gen.finish_reason == "length" and gen.completion_tokens == len(ids)
    assert gen.token_ids == tuple(ids)
    assert "".join(pieces) == gen.text == tokenizer.decode(ids, skip_special_tokens=True)


@pytest.mark.parametrize("stop", ["rum", "the sea", "!", "sails"])
def test_stop_strings_are_never_streamed(tokenizer, stop: str) -> None:  # type: ignore[no-untyped-def]
    text = "ahoy matey, the sea is wide and the rum is gone!"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    pieces, gen = _run(FakeEngine(tokenizer, ids), {"prompt": "x", "max_tokens": len(ids), "stop": [stop]})
    joined = "".join(pieces)
    assert joined == gen.text
    if stop in text:
        assert joined == text[:text.find(stop)] and gen.finish_reason == "stop"
    else:
        assert joined == text and gen.finish_reason == "length"


def test_held_back_is_the_longest_stop_prefix() -> None:
    assert _held_back("and the r", ("rum",)) == 1
    assert _held_back("and the ru", ("rum", "xyz")) == 2
    assert _held_back("and the", ("rum",)) == 0
    assert _held_back("ab", ("abc", "b")) == 2


def test_simple_chat_template_and_tokenizer_template(tokenizer) -> None:  # type: ignore[no-untyped-def]
    msgs = (("system", "be brief"), ("user", "hi"), ("assistant", "hello"), ("user", "more"))
    assert simple_template(msgs) == "System: be brief\nUser: hi\nAssistant: hello\nUser: more\nAssistant:"
    assert chat_prompt(tokenizer, msgs) == (simple_template(msgs), False)
    tokenizer.chat_template = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}"
                               "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}")
    try:
        text, templated = chat_prompt(tokenizer, msgs[:2])
    finally:
        tokenizer.chat_template = None
    assert templated and text == "<s><|system|>be brief<|user|>hi<|assistant|>"


def test_messages_event() -> None:
    req = parse_event({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
    assert req.messages == (("user", "hi"),) and req.prompt == ""
    for bad in ({"messages": []}, {"messages": "hi"}, {"messages": [{"role": "user"}]},
                {"messages": [{"role": "user", "content": 1}]},
                {"messages": [{"role": "user", "content": "x"}], "prompt": "y"}):
        with pytest.raises(InvalidEvent):
            parse_event(bad)


def test_real_engine_stream_equals_generate(tmp_path: Path) -> None:
    """The real engine: streamed pieces of a greedy generation are its buffered text, with
    and without a chat prompt."""
    from slfaas.functions.engine import BackboneSource, LoraEngine
    from slfaas.gpu_node.resources.shared_weights import build_shared_image
    from slfaas.testing.tinymodels import make_adapter, make_base_model

    base = make_base_model(tmp_path / "base")
    engine = LoraEngine(BackboneSource(fd=build_shared_image(base).fd), base, make_adapter(base, tmp_path / "a", seed=3))
    for event in ({"prompt": "the quick brown fox", "max_tokens": 40, "temperature": 0},
                  {"messages": [{"role": "user", "content": "ahoy"}], "max_tokens": 24, "temperature": 0}):
        buffered = engine.generate(parse_event(event))
        pieces, gen = _run(engine, event)
        assert "".join(pieces) == gen.text == buffered.text
        assert gen.token_ids == buffered.token_ids and gen.finish_reason == buffered.finish_reason
