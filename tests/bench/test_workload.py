"""Mapping requests onto functions (deterministic per seed, frequencies as the popularity
says) and capping lengths to the options and the model's context."""
from __future__ import annotations

import math
from collections import Counter

import pytest

from slfaas.bench import LengthCaps, Popularity, Trace, TraceError, TraceRequest, function_names, plan_requests
from slfaas.bench.workload import assign_functions
from slfaas.functions.events import MAX_TOKENS_LIMIT


def test_parse_popularity() -> None:
    assert Popularity.parse("uniform") == Popularity("uniform")
    assert Popularity.parse(" ZIPF:1.2") == Popularity("zipf", 1.2)
    assert Popularity.parse("zipf:0").spec == "zipf:0"
    for bad in ("zipf", "zipf:", "zipf:-1", "zipf:abc", "zipf:inf", "zipf:nan", "pareto:1", "", "uniform:2"):
        with pytest.raises(TraceError, match="bad popularity"):
            Popularity.parse(bad)


def test_weights() -> None:
    w = Popularity.parse("zipf:1").weights(4)
    h = 1 + 1 / 2 + 1 / 3 + 1 / 4
    assert w == pytest.approx([1 / h, 1 / 2 / h, 1 / 3 / h, 1 / 4 / h])
    assert Popularity.parse("uniform").weights(5) == pytest.approx([0.2] * 5)
    assert Popularity.parse("zipf:0").weights(3) == pytest.approx([1 / 3] * 3)


@pytest.mark.parametrize("spec", ["zipf:1.0", "zipf:0.6", "uniform"])
def test_assignment_is_deterministic_and_follows_the_weights(spec: str) -> None:
    pop = Popularity.parse(spec)
    n, k = 40000, 8
    a = assign_functions(n, k, pop, seed=5)
    assert a == assign_functions(n, k, pop, seed=5)
    assert a != assign_functions(n, k, pop, seed=6)
    counts = Counter(a)
    assert set(counts) <= set(range(k))
    for i, w in enumerate(pop.weights(k)):
        sd = math.sqrt(n * w * (1 - w))
        assert abs(counts[i] - n * w) < 5 * sd


def test_zero_functions() -> None:
    with pytest.raises(TraceError, match="--functions must be at least 1, got 0"):
        function_names(0)
    with pytest.raises(TraceError, match="--functions must be at least 1"):
        assign_functions(3, 0, Popularity("uniform"), 0)
    assert function_names(3, "fn") == ("fn-0", "fn-1", "fn-2")


@pytest.mark.parametrize("caps, given, expected", [
    (LengthCaps(), (1000, 200), (1000, 200)),
    (LengthCaps(max_prompt_tokens=512), (1000, 200), (512, 200)),
    (LengthCaps(max_output_tokens=64), (1000, 200), (1000, 64)),
    (LengthCaps(context_tokens=1024), (1000, 200), (824, 200)),           # the prompt yields to the output
    (LengthCaps(512, 64, 4096), (1000, 200), (512, 64)),
    (LengthCaps(context_tokens=100), (10, 500), (1, 99)),                # output alone overflows: 1 prompt token
    (LengthCaps(), (0, 0), (1, 1)),                                      # at least BOS, at least one token
    (LengthCaps(), (5, 10 ** 6), (5, MAX_TOKENS_LIMIT)),                 # the event's limit
])
def test_length_caps(caps: LengthCaps, given: tuple[int, int], expected: tuple[int, int]) -> None:
    prompt, output = caps.apply(*given)
    assert (prompt, output) == expected
    if caps.context_tokens is not None:
        assert prompt + output <= caps.context_tokens


def test_bad_caps() -> None:
    with pytest.raises(TraceError, match="--max-prompt-tokens must be at least 1, got 0"):
        LengthCaps(max_prompt_tokens=0)
    with pytest.raises(TraceError, match="--max-output-tokens must be at least 1"):
        LengthCaps(max_output_tokens=-5)
    with pytest.raises(TraceError, match="cannot hold a prompt and an output"):
        LengthCaps(context_tokens=1)


def test_plan_requests_keeps_order_lengths_and_mapping() -> None:
    trace = Trace(tuple(TraceRequest(i * 0.5, 100 * (i + 1), 10 * (i + 1)) for i in range(50)), "t.csv")
    names = function_names(4)
    plan = plan_requests(trace, names, Popularity.parse("zipf:1"), LengthCaps(max_prompt_tokens=250), seed=2)
    assert [p.index for p in plan] == list(range(50))
    assert [p.arrival_s for p in plan] == [r.arrival_s for r in trace.requests]
    assert [p.function for p in plan] == [names[i] for i in assign_functions(50, 4, Popularity.parse("zipf:1"), 2)]
    assert [p.prompt_tokens for p in plan] == [min(100 * (i + 1), 250) for i in range(50)]
    assert [p.trace_prompt_tokens for p in plan] == [100 * (i + 1) for i in range(50)]
    assert [p.output_tokens for p in plan] == [10 * (i + 1) for i in range(50)]
    assert plan == plan_requests(trace, names, Popularity.parse("zipf:1"), LengthCaps(max_prompt_tokens=250), 2)
