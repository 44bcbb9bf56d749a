"""The generation event (DESIGN.md "Interfaces"), validated into a frozen value."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

MAX_TOKENS_LIMIT = 8192


class InvalidEvent(ValueError):
    """The event does not describe a generation request."""


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    return_tokens: bool = False   # also return the generated token ids (exact comparisons)
    # chat: ((role, content), ...) rendered with the base tokenizer's chat template instead of
    # ``prompt`` (slfaas.functions.chat); the OpenAI-compatible endpoint sends these
    messages: tuple[tuple[str, str], ...] = ()
    # generate exactly ``max_tokens`` (EOS is sampled like any token), as vLLM's ``ignore_eos``:
    # benchmarks replay a trace's output lengths on random-weight models that emit EOS early
    ignore_eos: bool = False

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def _number(event: dict, key: str, kind: type, default: Any) -> Any:
    value = event.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
        raise InvalidEvent(f"'{key}' must be {'an integer' if kind is int else 'a number'}, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):  # json.loads accepts NaN and Infinity
        raise InvalidEvent(f"'{key}' must be a finite number, got {value!r}")
    try:
        return kind(value)
    except OverflowError:  # an integer too large for a float
        raise InvalidEvent(f"'{key}' is out of range")


def parse_event(event: Any) -> GenerationRequest:
    if not isinstance(event, dict):
        raise InvalidEvent(f"the event must be a JSON object with a 'prompt', got {type(event).__name__}")
    messages = _messages(event.get("messages"))
    prompt = event.get("prompt")
    if messages and prompt is not None:
        raise InvalidEvent("give either 'prompt' or 'messages', not both")
    if messages:
        prompt = ""
    elif not isinstance(prompt, str):
        raise InvalidEvent("the event needs 'prompt': a string" if prompt is None
                           else f"'prompt' must be a string, got {type(prompt).__name__}")
    max_tokens = _number(event, "max_tokens", int, 16)
    if not 1 <= max_tokens <= MAX_TOKENS_LIMIT:
        raise InvalidEvent(f"'max_tokens' must be between 1 and {MAX_TOKENS_LIMIT}, got {max_tokens}")
    temperature = _number(event, "temperature", float, 1.0)
    if temperature < 0:
        raise InvalidEvent(f"'temperature' must be >= 0, got {temperature}")
    top_p = _number(event, "top_p", float, 1.0)
    if not 0 < top_p <= 1:
        raise InvalidEvent(f"'top_p' must be in (0, 1], got {top_p}")
    seed = event.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise InvalidEvent(f"'seed' must be an integer or null, got {seed!r}")
    stop = event.get("stop") or ()
    if isinstance(stop, str):
        stop = (stop,)
    if not isinstance(stop, (list, tuple)) or not all(isinstance(s, str) and s for s in stop):
        raise InvalidEvent("'stop' must be a string or a list of non-empty strings")
    return_tokens = event.get("return_tokens", False)
    if not isinstance(return_tokens, bool):
        raise InvalidEvent(f"'return_tokens' must be a boolean, got {return_tokens!r}")
    ignore_eos = event.get("ignore_eos", False)
    if ignore_eos is None:
        ignore_eos = False
    if not isinstance(ignore_eos, bool):
        raise InvalidEvent(f"'ignore_eos' must be a boolean, got {ignore_eos!r}")
    return GenerationRequest(prompt, max_tokens, temperature, top_p, seed, tuple(stop), return_tokens, messages,
                             ignore_eos)


def _messages(value: Any) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not value:
        raise InvalidEvent("'messages' must be a non-empty list of {\"role\", \"content\"} objects")
    out = []
    for m in value:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise InvalidEvent("each message must be an object with string 'role' and 'content'")
        out.append((m["role"], m["content"]))
    return tuple(out)
