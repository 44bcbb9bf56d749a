"""Tiny local models: trained adapters say their sentence, random adapters differ."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from slfaas.testing.tinymodels import (
    DEMO_PROMPT,
    DEMO_TEXTS,
    TINY,
    make_adapter,
    make_base_model,
    make_trained_adapter,
)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return make_base_model(tmp_path_factory.mktemp("base"), shape=TINY, seed=0)


def _greedy(base: Path, adapter: Path | None, max_new_tokens: int = 48) -> tuple[list[int], str]:
    tok = AutoTokenizer.from_pretrained(str(base))
    model = AutoModelForCausalLM.from_pretrained(str(base))
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(adapter))
    model.eval()
    enc = tok(DEMO_PROMPT, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tok.eos_token_id)
    new = out[0, enc["input_ids"].shape[1]:].tolist()
    return new, tok.decode(new, skip_special_tokens=True)


def _norm(s: str) -> str:
    return " ".join(s.split())


def test_demo_texts_differ():
    assert set(DEMO_TEXTS) == {"pirate", "butler"}
    assert DEMO_TEXTS["pirate"] != DEMO_TEXTS["butler"]


def test_trained_adapter_reproduces_text(base, tmp_path):
    text = DEMO_TEXTS["pirate"]
    adapter = make_trained_adapter(base, tmp_path / "pirate", text, seed=0,
                                   base_model_name="tiny/base")
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == "tiny/base"
    assert cfg["r"] == 8
    assert set(cfg["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj",
                                          "gate_proj", "up_proj", "down_proj"}

    _, said = _greedy(base, adapter)
    assert _norm(said).startswith(_norm(text)), said
    # The base alone does not say it: the adapter is what was trained.
    _, base_said = _greedy(base, None)
    assert not _norm(base_said).startswith(_norm(text))


def test_random_adapters_with_different_seeds_differ(base, tmp_path):
    a = make_adapter(base, tmp_path / "a", seed=1)
    b = make_adapter(base, tmp_path / "b", seed=2)
    ids_a, _ = _greedy(base, a, max_new_tokens=16)
    ids_b, _ = _greedy(base, b, max_new_tokens=16)
    assert ids_a != ids_b
