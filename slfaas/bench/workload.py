"""What gets replayed: each trace request mapped onto one of N functions by popularity (seeded,
so every policy sees the same mapping) with its lengths capped to what the model can serve."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

from slfaas.bench.errors import TraceError
from slfaas.bench.trace import Trace
from slfaas.functions.events import MAX_TOKENS_LIMIT


@dataclass(frozen=True)
class Popularity:
    kind: str            # "zipf" | "uniform"
    exponent: float = 0.0

    @classmethod
    def parse(cls, spec: str) -> "Popularity":
        """``uniform`` or ``zipf:S`` (function i, 0-based, drawn with weight 1/(i+1)^S)."""
        text = spec.strip().lower()
        if text == "uniform":
            return cls("uniform")
        kind, _, s = text.partition(":")
        try:
            exponent = float(s)
        except ValueError:
            exponent = math.nan
        if kind != "zipf" or not math.isfinite(exponent) or exponent < 0:
            raise TraceError(f"bad popularity {spec!r}: expected uniform or zipf:S with S >= 0 (e.g. zipf:1.0)")
        return cls("zipf", exponent)

    @property
    def spec(self) -> str:
        return "uniform" if self.kind == "uniform" else f"zipf:{self.exponent:g}"

    def weights(self, n_functions: int) -> list[float]:
        raw = [1.0 if self.kind == "uniform" else (i + 1) ** -self.exponent for i in range(n_functions)]
        total = sum(raw)
        return [w / total for w in raw]


def assign_functions(n_requests: int, n_functions: int, popularity: Popularity, seed: int) -> list[int]:
    """A function index per request, drawn independently with the popularity's weights."""
    import numpy as np

    if n_functions < 1:
        raise TraceError(f"--functions must be at least 1, got {n_functions}")
    rng = np.random.default_rng([seed, 3])
    return [int(i) for i in rng.choice(n_functions, size=n_requests, p=popularity.weights(n_functions))]


@dataclass(frozen=True)
class LengthCaps:
    max_prompt_tokens: int | None = None
    max_output_tokens: int | None = None
    context_tokens: int | None = None    # the model's context window (prompt + output)

    def __post_init__(self) -> None:
        for name in ("max_prompt_tokens", "max_output_tokens"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise TraceError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
        if self.context_tokens is not None and self.context_tokens < 2:
            raise TraceError(f"the model's context ({self.context_tokens} tokens) cannot hold a prompt and an output")

    def apply(self, prompt_tokens: int, output_tokens: int) -> tuple[int, int]:
        """(prompt, output) within the caps, each at least 1 (a prompt holds at least the BOS
        token; an invocation generates at least one). The output keeps its length first: the
        prompt is cut to leave room for it in the context."""
        output = min(max(output_tokens, 1), MAX_TOKENS_LIMIT, self.max_output_tokens or MAX_TOKENS_LIMIT)
        prompt = max(prompt_tokens, 1)
        if self.max_prompt_tokens is not None:
            prompt = min(prompt, self.max_prompt_tokens)
        if self.context_tokens is not None:
            output = min(output, self.context_tokens - 1)
            prompt = min(prompt, self.context_tokens - output)
        return prompt, output


@dataclass(frozen=True)
class PlannedRequest:
    index: int                # position in the slice
    arrival_s: float          # trace seconds after the slice's start (before speedup)
    function: str
    prompt_tokens: int        # after the caps: the prompt is built to this many tokens
    output_tokens: int        # after the caps: generated exactly (ignore_eos)
    trace_prompt_tokens: int
    trace_output_tokens: int


def function_names(n_functions: int, prefix: str = "replay") -> tuple[str, ...]:
    if n_functions < 1:
        raise TraceError(f"--functions must be at least 1, got {n_functions}")
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,50}", prefix):
        raise TraceError(f"--function-prefix must be 1-50 letters, digits, '-' or '_', got {prefix!r}")
    return tuple(f"{prefix}-{i}" for i in range(n_functions))


def plan_requests(trace: Trace, functions: tuple[str, ...], popularity: Popularity, caps: LengthCaps,
                  seed: int) -> tuple[PlannedRequest, ...]:
    if not trace.requests:
        raise TraceError(f"{trace.source} holds no requests")
    picks = assign_functions(len(trace.requests), len(functions), popularity, seed)
    planned = []
    for i, (r, f) in enumerate(zip(trace.requests, picks)):
        prompt, output = caps.apply(r.prompt_tokens, r.output_tokens)
        planned.append(PlannedRequest(i, r.arrival_s, functions[f], prompt, output, r.prompt_tokens, r.output_tokens))
    return tuple(planned)
