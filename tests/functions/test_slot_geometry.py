"""The pure fit check: which adapters the slots take, which go to PEFT's loader (no torch)."""
from __future__ import annotations

import math

import pytest

from slfaas.functions.slot_geometry import (SlotGeometry, adapter_facts, check_fit, geometry_for,
                                            lora_module_keys)

QV = SlotGeometry(16, frozenset({"q_proj", "v_proj"}))
ATTN = SlotGeometry(16, frozenset({"q_proj", "k_proj", "v_proj", "o_proj"}))


def _config(**overrides: object) -> dict:
    """adapter_config.json as PEFT writes it for a plain LoRA (defaults spelled out)."""
    cfg = {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"],
           "lora_dropout": 0.0, "bias": "none", "use_rslora": False, "use_dora": False, "modules_to_save": None,
           "fan_in_fan_out": False, "init_lora_weights": True, "rank_pattern": {}, "alpha_pattern": {},
           "loftq_config": {}, "layer_replication": None, "megatron_core": "megatron.core", "task_type": "CAUSAL_LM"}
    cfg.update(overrides)
    return cfg


def _tensors(rank: int = 8, modules: tuple[str, ...] = ("q_proj", "v_proj"), layers: int = 2,
             dim: int = 64) -> dict[str, tuple[str, tuple[int, ...]]]:
    out = {}
    for layer in range(layers):
        for m in modules:
            key = f"base_model.model.model.layers.{layer}.self_attn.{m}"
            out[f"{key}.lora_A.weight"] = ("F32", (rank, dim))
            out[f"{key}.lora_B.weight"] = ("F32", (dim, rank))
    return out


def test_plain_lora_fits_and_reads_modules() -> None:
    facts = adapter_facts(_config(), _tensors())
    assert facts.unsupported == () and facts.rank == 8 and facts.scaling == 2.0
    assert {m.path for m in facts.modules} == {f"model.layers.{i}.self_attn.{m}" for i in (0, 1)
                                               for m in ("q_proj", "v_proj")}
    assert all((m.in_features, m.out_features, m.rank) == (64, 64, 8) for m in facts.modules)
    assert check_fit(facts, QV).fits and check_fit(facts, ATTN).fits
    assert lora_module_keys(_tensors())["model.layers.1.self_attn.v_proj"] == \
        "base_model.model.model.layers.1.self_attn.v_proj"


def test_scaling_is_peft_s() -> None:
    assert adapter_facts(_config(r=6, lora_alpha=7), _tensors(6)).scaling == 7 / 6
    rs = adapter_facts(_config(r=16, lora_alpha=7, use_rslora=True), _tensors(16))
    assert rs.scaling == 7 / math.sqrt(16)


def test_lower_rank_and_subset_of_modules_fit() -> None:
    assert check_fit(adapter_facts(_config(r=1), _tensors(1, ("v_proj",))), QV).fits
    assert check_fit(adapter_facts(_config(r=16), _tensors(16)), QV).fits


@pytest.mark.parametrize(("config", "tensors", "geometry", "needle"), [
    (_config(r=32), _tensors(32), QV, "rank 32 exceeds"),
    (_config(), _tensors(8, ("q_proj", "k_proj")), QV, "k_proj"),
    (_config(use_dora=True), _tensors(), ATTN, "use_dora"),
    (_config(modules_to_save=["lm_head"]), _tensors(), ATTN, "modules_to_save"),
    (_config(bias="lora_only"), _tensors(), ATTN, "bias"),
    (_config(fan_in_fan_out=True), _tensors(), ATTN, "fan_in_fan_out"),
    (_config(rank_pattern={"q_proj": 4}), _tensors(), ATTN, "rank_pattern"),
    (_config(init_lora_weights="pissa"), _tensors(), ATTN, "init_lora_weights"),
    (_config(layer_replication=[[0, 2]]), _tensors(), ATTN, "layer_replication"),
    (_config(some_future_feature={"on": True}), _tensors(), ATTN, "some_future_feature"),
    (_config(peft_type="IA3"), _tensors(), ATTN, "not LoRA"),
    (_config(r="8"), _tensors(), ATTN, "positive integer"),
    (_config(r=True), _tensors(), ATTN, "positive integer"),
    (_config(lora_alpha=float("nan")), _tensors(), ATTN, "lora_alpha"),
    (_config(r=8), _tensors(4), ATTN, "rank 4"),
    (_config(), {**_tensors(), "base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector": ("F32", (64,))},
     ATTN, "lora_magnitude_vector"),
    (_config(), {"base_model.model.model.embed_tokens.lora_embedding_A": ("F32", (8, 512))}, ATTN, "lora_embedding_A"),
    (_config(), {"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": ("F32", (8, 64))}, ATTN,
     "lacks its lora_A or lora_B"),
    (_config(), {"x.lora_A.weight": ("I8", (8, 64)), "x.lora_B.weight": ("F32", (64, 8))}, ATTN, "float matrix"),
    (_config(), {}, ATTN, "no LoRA"),
])
def test_what_does_not_fit_says_why(config: dict, tensors: dict, geometry: SlotGeometry, needle: str) -> None:
    fit = check_fit(adapter_facts(config, tensors), geometry)
    assert not fit.fits
    assert any(needle in reason for reason in fit.reasons), fit.reasons


def test_unknown_keys_with_default_values_are_harmless() -> None:
    facts = adapter_facts(_config(future_flag=False, future_list=[], future_cfg=None), _tensors())
    assert check_fit(facts, QV).fits


def test_geometry_validation() -> None:
    for bad in (0, -1, True, 2.0):
        with pytest.raises(ValueError):
            SlotGeometry(bad, frozenset({"q_proj"}))  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        SlotGeometry(8, frozenset())
    with pytest.raises(ValueError):
        SlotGeometry(8, frozenset({"self_attn.q_proj"}))


def test_geometry_for_covers_plain_adapters_and_skips_the_rest() -> None:
    plain = [adapter_facts(_config(r=4), _tensors(4)),
             adapter_facts(_config(r=12), _tensors(12, ("q_proj", "o_proj")))]
    odd = [adapter_facts(_config(use_dora=True), _tensors(8, ("k_proj",))),
           adapter_facts(_config(r=128), _tensors(128, ("k_proj",)))]
    geometry = geometry_for(plain + odd, rank_cap=64)
    assert geometry == SlotGeometry(16, frozenset({"q_proj", "v_proj", "o_proj"}))
    assert all(check_fit(f, geometry).fits for f in plain)
    assert geometry_for(odd) is None
    assert geometry_for([adapter_facts(_config(r=40), _tensors(40))], rank_cap=48).max_rank == 48
