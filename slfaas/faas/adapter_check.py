"""What can be known about a LoRA adapter without loading it, checked as strictly as PEFT and
safetensors will read it inside the instance: a function that passes CreateFunction must not
fail at every invoke because of its adapter_config.json or its weights' header.

Standard library only (plus ``regex`` for a user's target-module pattern, run with a time
limit): the control plane never imports torch.
"""
from __future__ import annotations

import json
import math
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slfaas.errors import InvalidParameter

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
MAX_CONFIG_BYTES = 1 << 20
MAX_HEADER_BYTES = 100 << 20          # safetensors' own limit
MAX_RANK = 1 << 16
MAX_MODEL_REF_CHARS = 1024            # a registered model name or a directory path
TARGET_PATTERN_TIMEOUT_S = 0.2        # all matches of one target_modules regex together

# safetensors dtype → bytes per element
DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2,
               "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
FLOAT_DTYPES = frozenset({"F16", "BF16", "F32", "F64"})
_LORA_SUFFIXES = {
    # adapter key suffix → (which base dim it must match, index of the rank in the lora tensor)
    ".lora_A.weight": ("in", 0),
    ".lora_B.weight": ("out", 1),
    ".lora_embedding_A": ("emb_in", 0),
    ".lora_embedding_B": ("emb_out", 1),
}


@dataclass(frozen=True)
class HeaderTensor:
    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int      # offsets into the data section, as the header gives them
    end: int


def strict_json(raw: bytes, what: str) -> Any:
    """JSON as Python's and Rust's strict readers agree on it: no NaN/Infinity, no number
    that is not finite, no nesting deeper than the parser manages."""
    def no_constant(name: str) -> Any:
        raise ValueError(f"{name} is not a JSON number")

    def finite(text: str) -> float:
        value = float(text)
        if not math.isfinite(value):
            raise ValueError(f"{text[:20]} is out of range")
        return value

    try:
        return json.loads(raw, parse_constant=no_constant, parse_float=finite)
    except RecursionError:
        raise InvalidParameter(f"{what} is nested too deeply") from None
    except (UnicodeDecodeError, ValueError) as exc:   # JSONDecodeError is a ValueError
        raise InvalidParameter(f"{what} is not valid JSON: {str(exc)[:200]}") from None


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def read_adapter_config(adapter_dir: Path) -> dict:
    path = Path(adapter_dir) / ADAPTER_CONFIG
    if not path.is_file():
        raise InvalidParameter(
            f"The code zip has no {ADAPTER_CONFIG} at its root: a slfaas-lora function needs a "
            f"PEFT LoRA adapter ({ADAPTER_CONFIG} + {ADAPTER_WEIGHTS}).")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise InvalidParameter(f"{ADAPTER_CONFIG} must be smaller than {MAX_CONFIG_BYTES} bytes")
    cfg = strict_json(path.read_bytes(), ADAPTER_CONFIG)
    if not isinstance(cfg, dict):
        raise InvalidParameter(f"{ADAPTER_CONFIG} must hold a JSON object")
    if cfg.get("peft_type", "LORA") != "LORA":
        raise InvalidParameter(f"Only LoRA adapters are supported, got peft_type={str(cfg.get('peft_type'))[:64]!r}")
    check_model_ref(cfg.get("base_model_name_or_path"), f"{ADAPTER_CONFIG}: base_model_name_or_path", optional=True)
    _check_lora_config(cfg)
    return cfg


def check_model_ref(ref: Any, what: str, optional: bool = False) -> None:
    """A base model reference (registered name or directory) that can be looked up at all."""
    if ref is None and optional:
        return
    if not isinstance(ref, str):
        raise InvalidParameter(f"{what} must be a string")
    if len(ref) > MAX_MODEL_REF_CHARS or "\0" in ref:
        raise InvalidParameter(f"{what} must be at most {MAX_MODEL_REF_CHARS} characters without NUL "
                               f"(got {len(ref)} characters)")


def _check_lora_config(cfg: dict) -> None:
    r = cfg.get("r", 8)
    if not _is_int(r) or not 1 <= r <= MAX_RANK:
        raise InvalidParameter(f"{ADAPTER_CONFIG}: r (the LoRA rank) must be an integer from 1 to {MAX_RANK}, "
                               f"got {str(r)[:64]}")
    if "lora_alpha" in cfg and not _is_number(cfg["lora_alpha"]):
        raise InvalidParameter(f"{ADAPTER_CONFIG}: lora_alpha must be a number, got {str(cfg['lora_alpha'])[:64]}")
    for key, valid, kind in (("rank_pattern", lambda v: _is_int(v) and 1 <= v <= MAX_RANK, "ranks"),
                             ("alpha_pattern", _is_number, "numbers")):
        pattern = cfg.get(key) or {}
        if not isinstance(pattern, dict) or not all(isinstance(k, str) and valid(v) for k, v in pattern.items()):
            raise InvalidParameter(f"{ADAPTER_CONFIG}: {key} must map module names to {kind}")
    targets = cfg.get("target_modules")
    if not (targets is None or isinstance(targets, str)
            or isinstance(targets, list) and targets and all(isinstance(t, str) and t for t in targets)):
        raise InvalidParameter(f"{ADAPTER_CONFIG}: target_modules must be a module name pattern or a non-empty "
                               f"list of module names")


def read_safetensors_header(path: Path) -> list[HeaderTensor]:
    """The header of an untrusted .safetensors file, validated as the safetensors library
    validates it on load: known dtypes, integer shapes and offsets, each tensor's byte range
    matching its shape, the ranges contiguous from 0 to the end of the file."""
    name = Path(path).name
    size = Path(path).stat().st_size
    with open(path, "rb") as fh:
        raw_len = fh.read(8)
        if len(raw_len) != 8:
            raise InvalidParameter(f"{name} is not a valid safetensors file: too short")
        (header_len,) = struct.unpack("<Q", raw_len)
        if header_len > min(size - 8, MAX_HEADER_BYTES):
            raise InvalidParameter(f"{name} is not a valid safetensors file: corrupt header length")
        header = strict_json(fh.read(header_len), f"{name} header")
    if not isinstance(header, dict):
        raise InvalidParameter(f"{name} is not a valid safetensors file: its header is not an object")
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise InvalidParameter(f"{name}: __metadata__ must map names to strings")
    tensors = [_tensor(name, key, info) for key, info in header.items()]
    expected = 0
    for t in sorted(tensors, key=lambda t: (t.begin, t.end)):
        if t.begin != expected:
            raise InvalidParameter(f"{name}: tensor {t.name[:200]!r} starts at byte {t.begin} of the data, "
                                   f"expected {expected} (overlapping or gapped offsets)")
        expected = t.end
    if expected != size - 8 - header_len:
        raise InvalidParameter(f"{name}: the tensors cover {expected} bytes, the file holds "
                               f"{size - 8 - header_len} after its header")
    return tensors


def _tensor(file_name: str, key: str, info: Any) -> HeaderTensor:
    where = f"{file_name}: tensor {key[:200]!r}"
    if not isinstance(info, dict):
        raise InvalidParameter(f"{where}: entry is not an object")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if dtype not in DTYPE_BYTES:
        raise InvalidParameter(f"{where}: unknown dtype {str(dtype)[:32]!r} (known: {', '.join(DTYPE_BYTES)})")
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise InvalidParameter(f"{where}: shape must be a list of non-negative integers")
    if (not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_int(o) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1]):
        raise InvalidParameter(f"{where}: data_offsets must be [begin, end] with 0 <= begin <= end")
    numel = math.prod(shape)
    if (offsets[1] - offsets[0]) != numel * DTYPE_BYTES[dtype]:
        raise InvalidParameter(f"{where}: data_offsets span {offsets[1] - offsets[0]} bytes, but shape "
                               f"{shape[:8]} of {dtype} needs {numel * DTYPE_BYTES[dtype]}")
    return HeaderTensor(key, dtype, tuple(shape), offsets[0], offsets[1])


def check_adapter_fits(adapter_dir: Path, base_tensors: dict[str, tuple[int, ...]], base_label: str) -> None:
    """Raise InvalidParameter unless the adapter's config targets modules the base model has
    and every LoRA tensor matches its base layer's shape and the configured rank.
    ``base_tensors``: the base checkpoint's tensor names and shapes."""
    cfg = read_adapter_config(adapter_dir)
    lora = read_safetensors_header(Path(adapter_dir) / ADAPTER_WEIGHTS)
    modules = {n[: -len(".weight")] for n in base_tensors if n.endswith(".weight")} | {"lm_head"}
    _check_targets(cfg.get("target_modules"), modules, base_label)
    ranks = {cfg.get("r", 8), *(cfg.get("rank_pattern") or {}).values()}
    if not any(t.name.endswith(s) for t in lora for s in _LORA_SUFFIXES):
        raise InvalidParameter(f"{ADAPTER_WEIGHTS} holds no LoRA tensors")
    for t in lora:
        suffix = next((s for s in _LORA_SUFFIXES if t.name.endswith(s)), None)
        if suffix is None:
            continue  # modules_to_save and other extras are checked when the instance loads
        module = t.name[: -len(suffix)]
        if module.startswith("base_model.model."):
            module = module[len("base_model.model."):]
        base_shape = base_tensors.get(f"{module}.weight")
        if base_shape is None:
            raise InvalidParameter(
                f"Adapter targets module {module[:200]!r}, which the base model {base_label} does not have")
        if len(t.shape) != 2 or len(base_shape) != 2:
            raise InvalidParameter(f"Adapter tensor {t.name[:200]} has unsupported rank {len(t.shape)}")
        if t.dtype not in FLOAT_DTYPES:
            raise InvalidParameter(f"Adapter tensor {t.name[:200]} has dtype {t.dtype}; LoRA weights must be one of "
                                   f"{', '.join(sorted(FLOAT_DTYPES))}")
        kind, rank_index = _LORA_SUFFIXES[suffix]
        if t.shape[rank_index] not in ranks:
            raise InvalidParameter(f"Adapter tensor {t.name[:200]} has rank {t.shape[rank_index]}, but "
                                   f"{ADAPTER_CONFIG} says r={cfg.get('r', 8)}")
        out_f, in_f = base_shape
        if cfg.get("fan_in_fan_out"):
            out_f, in_f = in_f, out_f
        expected, actual = {
            "in": (in_f, t.shape[1]), "out": (out_f, t.shape[0]),
            "emb_in": (out_f, t.shape[1]), "emb_out": (in_f, t.shape[0]),
        }[kind]
        if expected != actual:
            raise InvalidParameter(
                f"Adapter does not fit base model: {t.name[:200]} has shape {list(t.shape)}, but "
                f"{module[:200]}.weight in {base_label} has shape {list(base_shape)}")


def _check_targets(targets: Any, modules: set[str], base_label: str) -> None:
    """PEFT refuses to load an adapter none of whose target modules the model has: a list
    entry names a module or a module-path suffix; a string is a regex over full names."""
    if targets is None or targets == "all-linear":
        return
    if isinstance(targets, str):
        import regex

        deadline = time.monotonic() + TARGET_PATTERN_TIMEOUT_S
        try:
            pattern = regex.compile(targets)
            found = any(pattern.fullmatch(m, timeout=max(1e-3, deadline - time.monotonic())) for m in sorted(modules))
        except (regex.error, TimeoutError, RecursionError) as exc:
            raise InvalidParameter(f"{ADAPTER_CONFIG}: target_modules pattern {targets[:200]!r} is not usable: "
                                   f"{str(exc)[:200]}") from None
    else:
        found = any(m == t or m.endswith("." + t) for t in targets for m in modules)
    if not found:
        shown = targets[:200] if isinstance(targets, str) else ", ".join(t[:64] for t in targets[:10])
        raise InvalidParameter(f"{ADAPTER_CONFIG}: target_modules ({shown}) match no module of the base model "
                               f"{base_label}")
