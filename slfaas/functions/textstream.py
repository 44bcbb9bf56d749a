"""Text as it is generated: token ids from ``LoraEngine.stream`` (or ``BatchEngine.stream``) →
text pieces.

Detokenising one token at a time is wrong for byte-level BPE (a character can span tokens)
and for tokenizers whose decoding depends on neighbours (leading spaces), so each piece is
the difference between decoding a short window with and without the newest tokens, emitted
only once it does not end inside a character (the method of Hugging Face TGI and vLLM).
Stop strings are honoured across pieces: text that could still become the start of a stop
string is held back until it cannot.
"""
from __future__ import annotations

import time
from contextlib import closing
from typing import Any, Generator

from slfaas.functions.engine import Generation
from slfaas.functions.events import GenerationRequest


def _held_back(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of a stop string."""
    best = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:n]):
                best = n
                break
    return best


def _cut_at_stop(req: GenerationRequest, text: str) -> str | None:
    """``text`` cut before the first stop string in it, or None when it holds none."""
    cuts = [i for i in (text.find(s) for s in req.stop) if i != -1]
    return text[:min(cuts)] if cuts else None


class _Detokenizer:
    def __init__(self, tokenizer: Any):
        self._tok = tokenizer
        self.ids: list[int] = []
        self._prefix = 0
        self._read = 0

    def _decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=True)

    def add(self, token_id: int) -> str:
        self.ids.append(token_id)
        before = self._decode(self.ids[self._prefix:self._read])
        after = self._decode(self.ids[self._prefix:])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self._prefix, self._read = self._read, len(self.ids)
            return after[len(before):]
        return ""

    def flush(self) -> str:
        """Whatever is still pending at the end (even an incomplete character)."""
        before = self._decode(self.ids[self._prefix:self._read])
        after = self._decode(self.ids[self._prefix:])
        self._prefix = self._read = len(self.ids)
        return after[len(before):] if len(after) > len(before) else ""


def stream_text(engine: Any, req: GenerationRequest, stream: Any = None) -> Generator[str, None, Generation]:
    """Yield text pieces as tokens are generated; the generator's return value is the
    ``Generation`` (same fields as ``LoraEngine.generate``). ``stream``: the request's token
    stream if it was opened already (``BatchEngine.open``), else ``engine.stream(req)``."""
    with engine.busy():
        t0 = time.perf_counter()
        first_ts: float | None = None
        detok = _Detokenizer(engine.tokenizer)
        eos = frozenset() if req.ignore_eos else engine.eos_ids
        text = ""        # everything decoded so far (after stop-string cuts)
        sent = 0         # how much of ``text`` has been yielded
        finish = "length"
        stopped_by_string = False
        # closed on break: the engine's device-time meter ends there
        if stream is None:
            stream = engine.stream(req)
        with closing(stream) as tokens:
            for token_id in tokens:
                if first_ts is None:
                    first_ts = time.perf_counter()
                if token_id in eos:
                    detok.ids.append(token_id)
                    finish = "stop"
                    break
                text += detok.add(token_id)
                cut = _cut_at_stop(req, text)
                if cut is not None:
                    text, finish, stopped_by_string = cut, "stop", True
                    break
                ready = len(text) - (_held_back(text, req.stop) if req.stop else 0)
                if ready > sent:
                    yield text[sent:ready]
                    sent = ready
        if not stopped_by_string:
            text += detok.flush()
            cut = _cut_at_stop(req, text)
            if cut is not None:
                text, finish = cut, "stop"
        if len(text) > sent:
            yield text[sent:]
        ttft_ms = ((first_ts or time.perf_counter()) - t0) * 1000
        stats = getattr(stream, "stats", None)   # a batched request's own account (slfaas.functions.batching)
        if stats is not None:
            return Generation(text, finish, stats.prompt_tokens, len(detok.ids), ttft_ms, stats.prefill_ms,
                              tuple(detok.ids), stats.device_ms, stats.batch_size, stats.batch_device_ms)
        device_ms = getattr(engine, "last_device_ms", 0.0)
        return Generation(text, finish, engine.last_prompt_tokens, len(detok.ids), ttft_ms,
                          engine.last_prefill_ms, tuple(detok.ids), device_ms, 1, device_ms)
