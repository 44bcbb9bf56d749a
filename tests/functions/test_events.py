"""parse_event: the generation event, validated with messages that name the field."""
from __future__ import annotations

import json

import pytest

from slfaas.functions.events import MAX_TOKENS_LIMIT, GenerationRequest, InvalidEvent, parse_event


def test_defaults() -> None:
    req = parse_event({"prompt": "hi"})
    assert req == GenerationRequest(prompt="hi", max_tokens=16, temperature=1.0, top_p=1.0, seed=None, stop=())
    assert req.greedy is False
    assert isinstance(req.temperature, float) and isinstance(req.top_p, float)


def test_explicit_nulls_mean_defaults() -> None:
    req = parse_event({"prompt": "", "max_tokens": None, "temperature": None, "top_p": None, "seed": None,
                       "stop": None})
    assert req == GenerationRequest(prompt="", max_tokens=16, temperature=1.0, top_p=1.0, seed=None, stop=())


def test_all_fields() -> None:
    req = parse_event({"prompt": "p", "max_tokens": MAX_TOKENS_LIMIT, "temperature": 0, "top_p": 0.5, "seed": 42,
                       "stop": ["\n", "END"], "extra": "ignored"})
    assert req == GenerationRequest("p", MAX_TOKENS_LIMIT, 0.0, 0.5, 42, ("\n", "END"))
    assert req.greedy is True
    assert isinstance(req.temperature, float)


@pytest.mark.parametrize("stop, expected", [
    ("END", ("END",)),
    (["a", "b"], ("a", "b")),
    (("a",), ("a",)),
    ([], ()),
    ("", ()),
])
def test_stop_as_str_or_list(stop, expected) -> None:  # type: ignore[no-untyped-def]
    assert parse_event({"prompt": "p", "stop": stop}).stop == expected


@pytest.mark.parametrize("event, match", [
    (None, "must be a JSON object with a 'prompt', got NoneType"),
    ([{"prompt": "x"}], "must be a JSON object with a 'prompt', got list"),
    ("hello", "must be a JSON object with a 'prompt', got str"),
    ({}, "needs 'prompt': a string"),
    ({"prompt": 5}, "'prompt' must be a string, got int"),
    ({"prompt": ["a"]}, "'prompt' must be a string, got list"),
    ({"prompt": "p", "max_tokens": 0}, "'max_tokens' must be between 1 and 8192, got 0"),
    ({"prompt": "p", "max_tokens": MAX_TOKENS_LIMIT + 1}, "'max_tokens' must be between 1 and 8192"),
    ({"prompt": "p", "max_tokens": 1.5}, "'max_tokens' must be an integer, got 1.5"),
    ({"prompt": "p", "max_tokens": 8.0}, "'max_tokens' must be an integer"),
    ({"prompt": "p", "max_tokens": "8"}, "'max_tokens' must be an integer, got '8'"),
    ({"prompt": "p", "max_tokens": True}, "'max_tokens' must be an integer, got True"),
    ({"prompt": "p", "temperature": -0.1}, "'temperature' must be >= 0, got -0.1"),
    ({"prompt": "p", "temperature": "hot"}, "'temperature' must be a number, got 'hot'"),
    ({"prompt": "p", "temperature": False}, "'temperature' must be a number, got False"),
    ({"prompt": "p", "top_p": 0}, r"'top_p' must be in \(0, 1\], got 0"),
    ({"prompt": "p", "top_p": 1.01}, r"'top_p' must be in \(0, 1\]"),
    ({"prompt": "p", "top_p": [0.5]}, "'top_p' must be a number"),
    ({"prompt": "p", "seed": 1.5}, "'seed' must be an integer or null, got 1.5"),
    ({"prompt": "p", "seed": "7"}, "'seed' must be an integer or null"),
    ({"prompt": "p", "seed": True}, "'seed' must be an integer or null, got True"),
    ({"prompt": "p", "stop": 5}, "'stop' must be a string or a list of non-empty strings"),
    ({"prompt": "p", "stop": ["a", ""]}, "'stop' must be a string or a list of non-empty strings"),
    ({"prompt": "p", "stop": ["a", 1]}, "'stop' must be a string or a list"),
    ({"prompt": "p", "stop": {"a": 1}}, "'stop' must be a string or a list"),
    ({"prompt": "p", "ignore_eos": 1}, "'ignore_eos' must be a boolean, got 1"),
    ({"prompt": "p", "ignore_eos": "true"}, "'ignore_eos' must be a boolean, got 'true'"),
])
def test_invalid_fields(event, match) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidEvent, match=match):
        parse_event(event)


@pytest.mark.parametrize("raw", [
    '{"prompt": "p", "temperature": NaN}',
    '{"prompt": "p", "temperature": Infinity}',
    '{"prompt": "p", "top_p": NaN}',
    '{"prompt": "p", "top_p": -Infinity}',
])
def test_non_finite_numbers_from_json_are_invalid(raw) -> None:  # type: ignore[no-untyped-def]
    # Python's json accepts NaN/Infinity, and the service checks payloads with json.loads
    with pytest.raises(InvalidEvent, match="'(temperature|top_p)' must be"):
        parse_event(json.loads(raw))


def test_huge_integers_are_invalid_not_a_crash() -> None:
    with pytest.raises(InvalidEvent, match="'temperature' is out of range"):
        parse_event(json.loads('{"prompt": "p", "temperature": 1%s}' % ("0" * 400)))
    with pytest.raises(InvalidEvent, match="'max_tokens' must be between"):
        parse_event({"prompt": "p", "max_tokens": 10 ** 400})


def test_invalid_event_is_a_value_error() -> None:
    assert issubclass(InvalidEvent, ValueError)


def test_ignore_eos() -> None:
    assert parse_event({"prompt": "p"}).ignore_eos is False
    assert parse_event({"prompt": "p", "ignore_eos": None}).ignore_eos is False
    assert parse_event({"prompt": "p", "ignore_eos": True}).ignore_eos is True
