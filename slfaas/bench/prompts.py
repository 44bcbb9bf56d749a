"""Prompts of an exact token count, made with the base model's own tokenizer, so the function
prefills as many tokens as the trace asks.

A long filler of ordinary words is tokenized once; request i's prompt is a window of its
token ids starting at a seeded offset (so prompts differ and no prefix is shared), decoded to
text. Decoding then re-encoding can merge or split tokens at the window's edges, so the window
is resized by the difference until the runtime's count (``tokenizer(text)``, special tokens
included, as ``LoraEngine`` counts) is exact; the count reached is returned either way."""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slfaas.bench.errors import TraceError

_WORDS = (
    "the a of and to in is was for on that with as by at from it this be are or an which one "
    "time year people way day man thing woman life child world school state family student "
    "group country problem hand part place case week company system program question work "
    "government number night point home water room mother area money story fact month lot "
    "right study book eye job word business issue side kind head house service friend father "
    "power hour game line end member law car city community name president team minute idea "
    "kid body information back parent face others level office door health person art war "
    "history party result change morning reason research girl guy moment air teacher force "
    "quick brown fox jumps over lazy dog sea wide rum gone sails treasure letter reply course "
    "serverless functions share backbone tokens stream client cold start libraries device"
).split()
_MAX_ROUNDS = 24


@dataclass(frozen=True)
class ModelInfo:
    path: Path
    context_tokens: int | None    # max_position_embeddings, when the config says


def model_info(model_dir: Path | str) -> ModelInfo:
    """The base model's context window, from its ``config.json``."""
    path = Path(model_dir)
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise TraceError(f"{path} is not a model directory with a readable config.json ({exc})") from None
    ctx = config.get("max_position_embeddings") or config.get("n_positions") or config.get("max_sequence_length")
    return ModelInfo(path, int(ctx) if isinstance(ctx, int) and ctx > 0 else None)


def load_tokenizer(model_dir: Path | str) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(model_dir))
    except (OSError, ValueError) as exc:
        raise TraceError(f"cannot load the tokenizer of {model_dir}: {str(exc).splitlines()[0]}") from None


class PromptBuilder:
    def __init__(self, tokenizer: Any, seed: int = 0):
        self._tok = tokenizer
        self._rng_seed = seed
        self._words = random.Random(seed)
        self._filler: list[int] = []
        self._special = self.count("")    # BOS and friends: tokens of an empty prompt

    def count(self, text: str) -> int:
        """Tokens the runtime prefills for ``text`` (an empty encoding becomes one BOS there)."""
        return max(1, len(self._tok(text)["input_ids"]))

    def _ensure_filler(self, n_tokens: int) -> None:
        while len(self._filler) < n_tokens:
            words = [self._words.choice(_WORDS) for _ in range(max(1024, n_tokens))]
            self._filler += self._tok(" ".join(words), add_special_tokens=False)["input_ids"]

    def build(self, n_tokens: int, salt: int) -> tuple[str, int]:
        """(prompt text, its token count); the count equals ``n_tokens`` unless the tokenizer
        cannot say it (e.g. fewer tokens than its special ones)."""
        body = n_tokens - self._special
        if body <= 0:
            return "", self.count("")
        self._ensure_filler(2 * body + 64)
        start = random.Random(self._rng_seed * 1_000_003 + salt).randrange(len(self._filler) - body - 64)
        size = body
        tried: set[int] = set()
        best: tuple[int, str, int] | None = None
        for _ in range(_MAX_ROUNDS):
            tried.add(size)
            text = self._tok.decode(self._filler[start:start + size], skip_special_tokens=True).strip()
            got = self.count(text)
            if best is None or abs(got - n_tokens) < best[0]:
                best = (abs(got - n_tokens), text, got)
            if got == n_tokens:
                break
            size = max(1, size + (n_tokens - got))
            if size in tried:   # oscillating across a merge at the window's edge: move the window
                start, size = start + 1, body
                tried.clear()
        assert best is not None
        return best[1], best[2]
