"""Pre-warmed runtimes with LoRA slots, specialised by copying an adapter in: outputs equal
PEFT's ``PeftModel.from_pretrained`` token for token (fp32, CPU) and logits bit for bit;
adapters no slot fits take PEFT's loader instead."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from slfaas.functions.adapter_tensors import AdapterFormatError, AdapterSource
from slfaas.functions.engine import BackboneSource, LoraEngine
from slfaas.functions.events import parse_event
from slfaas.functions.slot_geometry import SlotGeometry
from slfaas.functions.slots import SlotLinear, WarmupShapes
from slfaas.gpu_node.resources.shared_weights import build_shared_image

ALL = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
GEOMETRY = SlotGeometry(16, frozenset(ALL))
FAST = WarmupShapes((1, 7), decode_steps=1)
PROMPTS = ("the quick brown fox", "hello world, how are you today?", "ahoy")
# name → LoraConfig arguments; ranks ≤ 16 and different module subsets fit GEOMETRY
FITTING = {
    "r4_qv": dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
    "r8_dropout": dict(r=8, lora_alpha=16, lora_dropout=0.1, bias="none",
                       target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "down_proj"]),
    "r16_rslora_mlp": dict(r=16, lora_alpha=7, use_rslora=True, target_modules=["gate_proj", "up_proj", "down_proj"]),
    "r6_layer1": dict(r=6, lora_alpha=5, target_modules=list(ALL), layers_to_transform=[1]),
}
MISFITS = {
    "r32": (dict(r=32, lora_alpha=32, target_modules=["q_proj", "v_proj"]), "rank 32"),
    "dora": (dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], use_dora=True), "use_dora"),
    "saves_head": (dict(r=4, lora_alpha=8, target_modules=["q_proj"], modules_to_save=["lm_head"]), "modules_to_save"),
}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny matrices: a second OpenMP thread only spins against the machine's other work."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@dataclass(frozen=True)
class Kit:
    base: Path
    fd: int
    adapters: dict[str, Path]


def _make_adapter(base: Path, out: Path, seed: int, **lora: object) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(str(base)), LoraConfig(task_type="CAUSAL_LM", **lora))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name or "modules_to_save" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.5)
    model.save_pretrained(str(out))
    return out


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> Kit:
    from slfaas.testing.tinymodels import make_base_model

    root = tmp_path_factory.mktemp("slots")
    base = make_base_model(root / "base")
    specs = {**FITTING, **{k: v for k, (v, _) in MISFITS.items()}}
    adapters = {name: _make_adapter(base, root / name, seed, **cfg) for seed, (name, cfg) in enumerate(specs.items())}
    image = build_shared_image(base)
    return Kit(base, image.fd, adapters)


def _prewarmed(kit: Kit, geometry: SlotGeometry = GEOMETRY) -> LoraEngine:
    return LoraEngine.prewarmed(BackboneSource(fd=kit.fd), kit.base, geometry, FAST)


def _peft(kit: Kit, name: str) -> LoraEngine:
    return LoraEngine(BackboneSource(fd=kit.fd), kit.base, kit.adapters[name])


def _tokens(engine: LoraEngine) -> list[tuple[int, ...]]:
    return [engine.generate(parse_event({"prompt": p, "max_tokens": 24, "temperature": 0})).token_ids for p in PROMPTS]


def _logits(engine: LoraEngine) -> torch.Tensor:
    ids = engine.tokenizer(PROMPTS[1], return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        return engine.model(input_ids=ids).logits


def _assert_padding_exact(slots: torch.Tensor, peft: torch.Tensor) -> None:
    """Zero-padding a rank adds exact zeros, but a product with a longer inner dimension may
    sum the same non-zero terms in another order (the BLAS kernel is chosen by shape and CPU):
    equal up to fp32 rounding, and the tokens (asserted by the callers) are identical."""
    diff = (slots - peft).abs().max().item()
    assert diff <= 1e-5 * max(1.0, peft.abs().max().item()), diff


@pytest.fixture(scope="module")
def bare_tokens(kit: Kit) -> list[tuple[int, ...]]:
    """The backbone alone, through empty slots."""
    return _tokens(_prewarmed(kit))


@pytest.mark.parametrize("name", sorted(FITTING))
def test_specialised_runtime_equals_peft(kit: Kit, name: str, bare_tokens: list) -> None:
    engine = _prewarmed(kit)
    spec = engine.specialise(AdapterSource.from_dir(kit.adapters[name]))
    assert spec.path == "slots" and spec.reasons == ()
    reference = _peft(kit, name)
    assert _tokens(engine) == _tokens(reference)
    _assert_padding_exact(_logits(engine), _logits(reference))
    assert _tokens(engine) != bare_tokens                      # the adapter matters: the test can fail


def test_empty_slots_are_exactly_the_backbone(kit: Kit) -> None:
    from transformers import AutoModelForCausalLM

    engine = _prewarmed(kit)
    plain = AutoModelForCausalLM.from_pretrained(str(kit.base), dtype=torch.float32).eval()
    ids = engine.tokenizer(PROMPTS[0], return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        assert torch.equal(engine.model(input_ids=ids).logits, plain(input_ids=ids).logits)


def test_hf_generate_agrees(kit: Kit) -> None:
    """Anchored to the library itself, not only to the engine's own PEFT path."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    engine = _prewarmed(kit)
    engine.specialise(AdapterSource.from_dir(kit.adapters["r16_rslora_mlp"]))
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(kit.base)),
                                      str(kit.adapters["r16_rslora_mlp"])).eval()
    ids = engine.tokenizer(PROMPTS[1], return_tensors="pt")["input_ids"]
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=16, do_sample=False)
    got = engine.generate(parse_event({"prompt": PROMPTS[1], "max_tokens": 16, "temperature": 0})).token_ids
    assert tuple(out[0, ids.shape[1]:].tolist())[:len(got)] == got


def test_bytes_and_descriptor_sources_equal_the_file(kit: Kit) -> None:
    directory = kit.adapters["r8_dropout"]
    config = json.loads((directory / "adapter_config.json").read_text())
    raw = (directory / "adapter_model.safetensors").read_bytes()
    fd = os.memfd_create("host-tier-adapter")
    os.write(fd, raw)
    try:
        outputs = []
        for source in (AdapterSource.from_dir(directory), AdapterSource(config, weights_bytes=raw),
                       AdapterSource(config, weights_fd=fd)):
            engine = _prewarmed(kit)
            assert engine.specialise(source).path == "slots"
            outputs.append(_logits(engine))
        assert torch.equal(outputs[0], outputs[1]) and torch.equal(outputs[0], outputs[2])
    finally:
        os.close(fd)


def test_slot_addresses_never_change(kit: Kit) -> None:
    engine = _prewarmed(kit)
    slots = engine.slots
    assert slots is not None and len(slots.modules) == 2 * len(ALL)
    before = {p: (id(s.lora_A), s.lora_A.data_ptr(), s.lora_B.data_ptr(), s.lora_scaling.data_ptr())
              for p, s in slots.modules.items()}
    engine.specialise(AdapterSource.from_dir(kit.adapters["r8_dropout"]))
    after = {p: (id(s.lora_A), s.lora_A.data_ptr(), s.lora_B.data_ptr(), s.lora_scaling.data_ptr())
             for p, s in slots.modules.items()}
    assert before == after
    assert all(isinstance(m, SlotLinear) for p, m in engine.model.named_modules() if p in before)


def test_reloading_clears_what_a_larger_adapter_left(kit: Kit) -> None:
    """Slots filled twice (mechanism level) hold exactly the second adapter: no stale columns
    beyond its rank, no stale modules it does not target."""
    engine = _prewarmed(kit)
    assert engine.slots is not None
    engine.slots.load(AdapterSource.from_dir(kit.adapters["r16_rslora_mlp"]))
    engine.slots.load(AdapterSource.from_dir(kit.adapters["r8_dropout"]))
    engine.slots.load(AdapterSource.from_dir(kit.adapters["r4_qv"]))
    _assert_padding_exact(_logits(engine), _logits(_peft(kit, "r4_qv")))
    assert sum(s.rank > 0 for s in engine.slots.modules.values()) == 4   # q, v × 2 layers


def test_a_runtime_is_specialised_once(kit: Kit) -> None:
    engine = _prewarmed(kit)
    engine.specialise(AdapterSource.from_dir(kit.adapters["r4_qv"]))
    with pytest.raises(RuntimeError):
        engine.specialise(AdapterSource.from_dir(kit.adapters["r8_dropout"]))


@pytest.mark.parametrize("name", sorted(MISFITS))
def test_misfits_take_peft_and_still_equal_it(kit: Kit, name: str) -> None:
    engine = _prewarmed(kit)
    spec = engine.specialise(AdapterSource.from_dir(kit.adapters[name]))
    assert spec.path == "peft" and any(MISFITS[name][1] in r for r in spec.reasons)
    assert not any(isinstance(m, SlotLinear) for m in engine.model.modules())
    assert torch.equal(_logits(engine), _logits(_peft(kit, name)))


def test_module_outside_the_geometry_takes_peft(kit: Kit) -> None:
    engine = _prewarmed(kit, SlotGeometry(16, frozenset({"q_proj", "v_proj"})))
    spec = engine.specialise(AdapterSource.from_dir(kit.adapters["r8_dropout"]))
    assert spec.path == "peft" and any("k_proj" in r for r in spec.reasons)
    assert _tokens(engine) == _tokens(_peft(kit, "r8_dropout"))


def test_misfit_from_bytes_loads_through_a_temporary_directory(kit: Kit) -> None:
    directory = kit.adapters["dora"]
    source = AdapterSource(json.loads((directory / "adapter_config.json").read_text()),
                           weights_bytes=(directory / "adapter_model.safetensors").read_bytes())
    engine = _prewarmed(kit)
    assert engine.specialise(source).path == "peft"
    assert torch.equal(_logits(engine), _logits(_peft(kit, "dora")))


def test_corrupt_weights_fail_clearly_and_touch_nothing(kit: Kit) -> None:
    engine = _prewarmed(kit)
    config = json.loads((kit.adapters["r4_qv"] / "adapter_config.json").read_text())
    with pytest.raises(AdapterFormatError):
        engine.specialise(AdapterSource(config, weights_bytes=b"\x10" + b"\0" * 7 + b"{not json"))
    assert engine.specialisation is None and engine.slots is not None
    assert all(s.rank == 0 and not s.lora_A.any() for s in engine.slots.modules.values())
    assert engine.specialise(AdapterSource.from_dir(kit.adapters["r4_qv"])).path == "slots"


def test_warm_up_runs_every_prefill_length_and_decode(kit: Kit, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pre-warming runs the generation's own forwards through the (empty) slot layers: each
    prefill length, each followed by decode steps of one token."""
    calls: list[tuple[int, int]] = []   # (slot module, tokens in its input)
    forward = SlotLinear.forward

    def recording(self: SlotLinear, x: torch.Tensor) -> torch.Tensor:
        calls.append((id(self), x.shape[-2]))
        return forward(self, x)

    monkeypatch.setattr(SlotLinear, "forward", recording)
    LoraEngine.prewarmed(BackboneSource(fd=kit.fd), kit.base, GEOMETRY, WarmupShapes((40, 3, 9), decode_steps=2))
    first = calls[0][0]
    assert [n for module, n in calls if module == first] == [3, 1, 1, 9, 1, 1, 40, 1, 1]
    assert len({module for module, _ in calls}) == 2 * len(ALL)   # every slot took part


def test_timings_tell_a_pre_warmed_cold_start_from_a_fresh_one(kit: Kit) -> None:
    engine = _prewarmed(kit)
    assert engine.prewarm_timings is not None and engine.prewarm_timings.backbone_attach_s > 0
    assert engine.warmup_s > 0
    spec = engine.specialise(AdapterSource.from_dir(kit.adapters["r4_qv"]))
    t = engine.timings   # what this function's cold start paid: the copy alone
    assert (t.imports_s, t.backbone_attach_s, t.device_init_s) == (0.0, 0.0, 0.0)
    assert t.adapter_load_s == spec.seconds > 0
    # slots and an adapter at once (a fresh process): one engine pays attach and copy
    fresh = LoraEngine(BackboneSource(fd=kit.fd), kit.base, kit.adapters["r4_qv"], slots=GEOMETRY, warmup=FAST)
    assert fresh.specialisation is not None and fresh.specialisation.path == "slots"
    assert fresh.timings.backbone_attach_s > 0 and fresh.timings.adapter_load_s >= fresh.specialisation.seconds
    assert _tokens(fresh) == _tokens(engine)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_slots_load_through_the_pinned_mirror(kit: Kit) -> None:
    """On a GPU the slots are one device tensor filled from a pinned host mirror in one copy;
    a reload after the mirror was released rebuilds it from the device. fp16: logits within
    2e-2 of PEFT's on the same device."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from slfaas.functions.slots import LoraSlots

    def base() -> torch.nn.Module:
        return AutoModelForCausalLM.from_pretrained(str(kit.base), dtype=torch.float16).to("cuda").eval()

    model = base()
    slots = LoraSlots(model, GEOMETRY)
    assert slots.storage.is_cuda and slots._mirror is not None and slots._mirror.is_pinned()
    ptr = slots.storage.data_ptr()
    ids = torch.tensor([[3, 17, 42, 7, 99, 5]], device="cuda")
    for name in ("r16_rslora_mlp", "r4_qv"):   # the second clears what the first left
        slots.load(AdapterSource.from_dir(kit.adapters[name]))
        slots.release_mirror()
        reference = PeftModel.from_pretrained(base(), str(kit.adapters[name]), torch_device="cuda").eval()
        with torch.inference_mode():
            got, want = model(input_ids=ids).logits, reference(input_ids=ids).logits
        assert (got.float() - want.float()).abs().max().item() <= 2e-2, name
    assert slots.storage.data_ptr() == ptr and slots._mirror is None
    assert sum(s.rank > 0 for s in slots.modules.values()) == 4


def test_warm_up_pauses_before_every_forward(kit: Kit, monkeypatch: pytest.MonkeyPatch) -> None:
    """``pause`` (the node's device-activity gate) runs before each warm-up forward, so that a
    pool filling itself waits between forwards while requests are served."""
    events: list[object] = []
    forward = LoraEngine.forward

    def recording(self: LoraEngine, ids: torch.Tensor, *args: object, **kw: object) -> object:
        events.append(int(ids.shape[1]))
        return forward(self, ids, *args, **kw)

    monkeypatch.setattr(LoraEngine, "forward", recording)
    LoraEngine.prewarmed(BackboneSource(fd=kit.fd), kit.base, GEOMETRY, WarmupShapes((5, 2), decode_steps=1),
                         pause=lambda: events.append("pause"))
    assert events == ["pause", 2, "pause", 1, "pause", 5, "pause", 1]
