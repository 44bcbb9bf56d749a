"""Which LoRA adapters a pre-warmed runtime's slots can take, decided from the adapter's
config and its tensor table alone (standard library only: the node checks an adapter once at
deploy, the runtime again before it copies anything).

A slot holds one linear module's A (max_rank × in) and B (out × max_rank) plus its scaling.
An adapter fits when it is plain LoRA (A and B per module, one rank, scaling alpha/r or
alpha/√r) whose rank is at most the slots' and whose modules are all slot modules; anything
else (DoRA, extra trained modules, per-module ranks, features this module does not know)
takes the slow path: PEFT's own loader.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

PEFT_KEY_PREFIX = "base_model.model."
_A_SUFFIX, _B_SUFFIX = ".lora_A.weight", ".lora_B.weight"
_FLOAT_DTYPES = frozenset({"F16", "BF16", "F32", "F64"})
_MODULE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

# adapter_config.json keys that never change a plain LoRA forward (or that this module reads
# itself). Any other key with a set value (not None/False/0/empty) is a feature the slots do
# not implement, so a PEFT release that adds one sends such adapters down the slow path.
_BENIGN_KEYS = frozenset({
    "base_model_name_or_path", "revision", "task_type", "peft_type", "inference_mode", "auto_mapping",
    "peft_version", "target_modules", "exclude_modules", "r", "lora_alpha", "lora_dropout", "use_rslora",
    "bias", "fan_in_fan_out", "init_lora_weights", "layers_to_transform", "layers_pattern",
    "megatron_core", "runtime_config", "qalora_group_size", "ensure_weight_tying",
})


@dataclass(frozen=True)
class SlotGeometry:
    """The shape of a runtime's slots: the largest rank and which modules (by their last
    name, e.g. ``q_proj``) carry a slot. A policy value: wider slots fit more adapters but
    cost memory and a little compute on every forward."""

    max_rank: int
    target_modules: frozenset[str]

    def __post_init__(self) -> None:
        if isinstance(self.max_rank, bool) or not isinstance(self.max_rank, int) or self.max_rank < 1:
            raise ValueError(f"max_rank must be a positive integer, got {self.max_rank!r}")
        if not self.target_modules:
            raise ValueError("a slot geometry needs at least one target module")
        bad = sorted(m for m in self.target_modules if not _MODULE_NAME.fullmatch(m))
        if bad:
            raise ValueError(f"target modules are plain module names (e.g. q_proj), got {bad}")
        object.__setattr__(self, "target_modules", frozenset(self.target_modules))


# PEFT's default targets for Llama-family models, at a rank that covers common adapters.
DEFAULT_GEOMETRY = SlotGeometry(16, frozenset({"q_proj", "v_proj"}))


@dataclass(frozen=True)
class LoraModule:
    path: str          # the module's path in the base model, e.g. "model.layers.0.self_attn.q_proj"
    rank: int
    in_features: int
    out_features: int

    @property
    def name(self) -> str:
        return self.path.rsplit(".", 1)[-1]


@dataclass(frozen=True)
class AdapterFacts:
    """What the slot path needs to know of an adapter; ``unsupported`` lists what it cannot do."""

    rank: int
    lora_alpha: float
    use_rslora: bool
    modules: tuple[LoraModule, ...]
    unsupported: tuple[str, ...] = ()

    @property
    def scaling(self) -> float:
        """PEFT's: alpha / r, or alpha / √r with rsLoRA (same float expression, same value)."""
        if self.rank <= 0:
            return 0.0
        return self.lora_alpha / math.sqrt(self.rank) if self.use_rslora else self.lora_alpha / self.rank


@dataclass(frozen=True)
class SlotFit:
    fits: bool
    reasons: tuple[str, ...]   # why not (empty when it fits)


def _is_set(value: Any) -> bool:
    return value not in (None, False, 0, "", [], {}, ())


def _config_problems(config: Mapping[str, Any]) -> list[str]:
    problems = []
    if config.get("peft_type", "LORA") != "LORA":
        problems.append(f"peft_type={config.get('peft_type')!r} is not LoRA")
    for key in sorted(config):
        if key not in _BENIGN_KEYS and _is_set(config[key]):
            problems.append(f"{key}={config[key]!r} is not supported by slots")
    if config.get("bias", "none") != "none":
        problems.append(f"bias={config.get('bias')!r} trains base biases")
    if _is_set(config.get("fan_in_fan_out")):
        problems.append("fan_in_fan_out layers (Conv1D) have no slots")
    init = config.get("init_lora_weights", True)
    if not (isinstance(init, bool) or init == "gaussian"):
        problems.append(f"init_lora_weights={init!r} may change the base weights")
    return problems


def lora_module_keys(tensor_names: Iterable[str]) -> dict[str, str]:
    """Module path in the base model → the key prefix of its A/B tensors in the file."""
    keys = {}
    for name in tensor_names:
        if name.endswith(_A_SUFFIX):
            key = name[: -len(_A_SUFFIX)]
            keys[key[len(PEFT_KEY_PREFIX):] if key.startswith(PEFT_KEY_PREFIX) else key] = key
    return keys


def adapter_facts(config: Mapping[str, Any], tensors: Mapping[str, tuple[str, tuple[int, ...]]]) -> AdapterFacts:
    """Facts from ``adapter_config.json`` (as a dict) and the weights' tensor table
    (name → (safetensors dtype, shape)). Never raises on odd input: problems are listed."""
    problems = _config_problems(config)
    r, alpha = config.get("r"), config.get("lora_alpha", config.get("r"))
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        problems.append(f"r={r!r} is not a positive integer")
        r = 0
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha):
        problems.append(f"lora_alpha={alpha!r} is not a number")
        alpha = 0.0
    halves: dict[str, dict[str, tuple[str, tuple[int, ...]]]] = {}
    for name, (dtype, shape) in sorted(tensors.items()):
        suffix = _A_SUFFIX if name.endswith(_A_SUFFIX) else _B_SUFFIX if name.endswith(_B_SUFFIX) else None
        if suffix is None:
            problems.append(f"tensor {name} is not a LoRA A/B weight")
            continue
        path = name[: -len(suffix)]
        path = path[len(PEFT_KEY_PREFIX):] if path.startswith(PEFT_KEY_PREFIX) else path
        if dtype not in _FLOAT_DTYPES or len(shape) != 2:
            problems.append(f"tensor {name} is {dtype} {list(shape)}, not a float matrix")
            continue
        halves.setdefault(path, {})[suffix] = (dtype, tuple(shape))
    modules = []
    for path, pair in sorted(halves.items()):
        if _A_SUFFIX not in pair or _B_SUFFIX not in pair:
            problems.append(f"module {path} lacks its lora_A or lora_B weight")
            continue
        (rank, in_f), (out_f, rank_b) = pair[_A_SUFFIX][1], pair[_B_SUFFIX][1]
        if rank != rank_b:
            problems.append(f"module {path}: lora_A rank {rank} != lora_B rank {rank_b}")
        elif rank != r:
            problems.append(f"module {path} has rank {rank}, the config says r={r} (rank_pattern?)")
        modules.append(LoraModule(path, rank, in_f, out_f))
    if not modules:
        problems.append("no LoRA A/B weights")
    return AdapterFacts(r, float(alpha), bool(config.get("use_rslora")), tuple(modules), tuple(problems))


def check_fit(facts: AdapterFacts, geometry: SlotGeometry) -> SlotFit:
    """Whether copying into slots of ``geometry`` gives exactly PEFT's adapter."""
    reasons = list(facts.unsupported)
    if facts.rank > geometry.max_rank:
        reasons.append(f"rank {facts.rank} exceeds the slots' {geometry.max_rank}")
    outside = sorted({m.name for m in facts.modules} - geometry.target_modules)
    if outside:
        reasons.append(f"modules {outside} have no slots (slots: {sorted(geometry.target_modules)})")
    return SlotFit(not reasons, tuple(reasons))


def geometry_for(adapters: Iterable[AdapterFacts], rank_cap: int = 64) -> SlotGeometry | None:
    """The smallest geometry that fits every plain adapter given (rank rounded up to a power
    of two, at most ``rank_cap``; adapters above the cap or not plain are left to the slow
    path). None when no adapter is plain LoRA."""
    ranks, names = [], set()
    for facts in adapters:
        if facts.unsupported or facts.rank > rank_cap:
            continue
        ranks.append(facts.rank)
        names.update(m.name for m in facts.modules)
    if not ranks:
        return None
    return SlotGeometry(min(rank_cap, 1 << (max(ranks) - 1).bit_length()), frozenset(names))
