"""Prompts of an exact token count by the runtime's own count (the base tokenizer, special
tokens included), different per request, the same for the same seed."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from slfaas.bench import TraceError
from slfaas.bench.prompts import PromptBuilder, load_tokenizer, model_info


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from slfaas.testing.tinymodels import make_tokenizer

    out = tmp_path_factory.mktemp("tok")
    make_tokenizer(out)
    return load_tokenizer(out)


def _runtime_count(tokenizer, text: str) -> int:  # type: ignore[no-untyped-def]
    """As LoraEngine.stream counts: tokenizer(prompt) with special tokens; empty → one BOS."""
    return max(1, int(tokenizer(text, return_tensors="pt", add_special_tokens=True)["input_ids"].shape[1]))


def test_exact_counts(tokenizer) -> None:  # type: ignore[no-untyped-def]
    builder = PromptBuilder(tokenizer, seed=0)
    for n in [*range(1, 300), 511, 1024, 2047, 4000]:
        text, count = builder.build(n, salt=n)
        assert count == n and _runtime_count(tokenizer, text) == n, n


def test_prompts_differ_per_request_and_repeat_per_seed(tokenizer) -> None:  # type: ignore[no-untyped-def]
    a, b = PromptBuilder(tokenizer, seed=1), PromptBuilder(tokenizer, seed=1)
    texts = [a.build(64, salt=i)[0] for i in range(20)]
    assert len(set(texts)) == 20
    assert texts == [b.build(64, salt=i)[0] for i in range(20)]
    assert PromptBuilder(tokenizer, seed=2).build(64, salt=0)[0] != texts[0]


def test_model_info(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"max_position_embeddings": 4096}))
    assert model_info(tmp_path).context_tokens == 4096
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "x"}))
    assert model_info(tmp_path).context_tokens is None
    with pytest.raises(TraceError, match="not a model directory"):
        model_info(tmp_path / "nope")
    (tmp_path / "config.json").write_text("{broken")
    with pytest.raises(TraceError, match="not a model directory"):
        model_info(tmp_path)


def test_load_tokenizer_of_a_non_model(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match="cannot load the tokenizer of"):
        load_tokenizer(tmp_path)
