"""Function code packages: validate a code zip, store it by digest, and check that its LoRA
adapter fits its base model, reading only headers (no torch import in the control plane)."""
from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shutil
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from slfaas.errors import InvalidParameter
from slfaas.weights.safetensors import WeightsFormatError, checkpoint_tensors, read_safetensors_header

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
MAX_UNZIPPED_BYTES = 2 << 30


@dataclass(frozen=True)
class CodePackage:
    """A stored code zip: AWS's CodeSha256 is the base64 of the zip's sha256 digest."""

    sha256_hex: str
    code_sha256_b64: str
    size_bytes: int
    zip_path: Path
    dir_path: Path
    adapter_base_model: str | None
    has_handler: bool


class CodeStore:
    """Zips and their extracted trees under ``root``, named by digest (identical code shared)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def put(self, zip_bytes: bytes) -> CodePackage:
        digest = hashlib.sha256(zip_bytes)
        hex_ = digest.hexdigest()
        zip_path = self.root / f"{hex_}.zip"
        dir_path = self.root / hex_
        if not dir_path.is_dir():
            tmp = self.root / f".{hex_}.{os.getpid()}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            try:
                _safe_extract(zip_bytes, tmp)
                adapter = read_adapter_config(tmp)
                del adapter
                if not (tmp / ADAPTER_WEIGHTS).is_file():
                    raise InvalidParameter(
                        f"The code zip has no {ADAPTER_WEIGHTS} at its root: a slfaas-lora function "
                        f"needs a PEFT LoRA adapter ({ADAPTER_CONFIG} + {ADAPTER_WEIGHTS})."
                    )
                try:
                    read_safetensors_header(tmp / ADAPTER_WEIGHTS)
                except WeightsFormatError as exc:
                    raise InvalidParameter(f"{ADAPTER_WEIGHTS} is not a valid safetensors file: {exc}")
                zip_path.write_bytes(zip_bytes)
                try:
                    os.replace(tmp, dir_path)
                except OSError:  # a concurrent put of the same digest won
                    shutil.rmtree(tmp, ignore_errors=True)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        return self.get(hex_)

    def get(self, sha256_hex: str) -> CodePackage:
        dir_path = self.root / sha256_hex
        zip_path = self.root / f"{sha256_hex}.zip"
        cfg = read_adapter_config(dir_path)
        raw = bytes.fromhex(sha256_hex)
        return CodePackage(
            sha256_hex=sha256_hex,
            code_sha256_b64=base64.b64encode(raw).decode(),
            size_bytes=zip_path.stat().st_size,
            zip_path=zip_path,
            dir_path=dir_path,
            adapter_base_model=cfg.get("base_model_name_or_path") or None,
            has_handler=(dir_path / "handler.py").is_file(),
        )


def _safe_extract(zip_bytes: bytes, dest: Path) -> None:
    try:
        zf = zipfile.ZipFile(io.BytesIO(zip_bytes))
        infos = zf.infolist()
    except (zipfile.BadZipFile, ValueError, OSError):
        raise InvalidParameter("Could not unzip uploaded file. Please check your file, then try to upload again.")
    if sum(i.file_size for i in infos) > MAX_UNZIPPED_BYTES:
        raise InvalidParameter(f"Unzipped size must be smaller than {MAX_UNZIPPED_BYTES} bytes")
    dest.mkdir(parents=True)
    with zf:
        for info in infos:
            path = PurePosixPath(info.filename)
            if path.is_absolute() or ".." in path.parts:
                raise InvalidParameter(f"Code zip entry {info.filename!r} escapes the package root")
            if stat.S_ISLNK(info.external_attr >> 16):
                raise InvalidParameter(f"Code zip entry {info.filename!r} is a symbolic link")
            target = dest.joinpath(*path.parts)
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                with zf.open(info) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
            except (zipfile.BadZipFile, OSError, EOFError) as exc:
                raise InvalidParameter(f"Could not unzip uploaded file ({info.filename}): {exc}")


def read_adapter_config(adapter_dir: Path) -> dict:
    path = Path(adapter_dir) / ADAPTER_CONFIG
    if not path.is_file():
        raise InvalidParameter(
            f"The code zip has no {ADAPTER_CONFIG} at its root: a slfaas-lora function needs a "
            f"PEFT LoRA adapter ({ADAPTER_CONFIG} + {ADAPTER_WEIGHTS})."
        )
    try:
        cfg = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidParameter(f"{ADAPTER_CONFIG} is not valid JSON: {exc}")
    if not isinstance(cfg, dict):
        raise InvalidParameter(f"{ADAPTER_CONFIG} must hold a JSON object")
    if cfg.get("peft_type", "LORA") != "LORA":
        raise InvalidParameter(f"Only LoRA adapters are supported, got peft_type={cfg.get('peft_type')!r}")
    return cfg


def validate_base_model_dir(base_dir: Path) -> None:
    if not (Path(base_dir) / "config.json").is_file():
        raise InvalidParameter(f"Base model directory {base_dir} has no config.json")
    try:
        checkpoint_tensors(base_dir)
    except WeightsFormatError as exc:
        raise InvalidParameter(f"Base model {base_dir}: {exc}")


_LORA_SUFFIXES = {
    # adapter key suffix → (which base dim it must match, index in the lora tensor)
    ".lora_A.weight": "in",
    ".lora_B.weight": "out",
    ".lora_embedding_A": "emb_in",
    ".lora_embedding_B": "emb_out",
}


def check_adapter_fits(adapter_dir: Path, base_dir: Path) -> None:
    """Raise InvalidParameter unless every LoRA tensor matches its base layer's shape."""
    cfg = read_adapter_config(adapter_dir)
    try:
        lora = read_safetensors_header(Path(adapter_dir) / ADAPTER_WEIGHTS)
        base = {t.name: t.shape for t in checkpoint_tensors(base_dir)}
    except WeightsFormatError as exc:
        raise InvalidParameter(str(exc))
    if not any(suffix in t.name for t in lora for suffix in _LORA_SUFFIXES):
        raise InvalidParameter(f"{ADAPTER_WEIGHTS} holds no LoRA tensors")
    for t in lora:
        suffix = next((s for s in _LORA_SUFFIXES if t.name.endswith(s)), None)
        if suffix is None:
            continue  # modules_to_save and other extras are checked when the instance loads
        module = t.name[: -len(suffix)]
        if module.startswith("base_model.model."):
            module = module[len("base_model.model."):]
        base_shape = base.get(f"{module}.weight")
        if base_shape is None:
            raise InvalidParameter(
                f"Adapter targets module {module!r}, which the base model {base_dir} does not have")
        if len(t.shape) != 2 or len(base_shape) != 2:
            raise InvalidParameter(f"Adapter tensor {t.name} has unsupported rank {len(t.shape)}")
        out_f, in_f = base_shape
        kind = _LORA_SUFFIXES[suffix]
        if cfg.get("fan_in_fan_out"):
            out_f, in_f = in_f, out_f
        expected, actual = {
            "in": (in_f, t.shape[1]), "out": (out_f, t.shape[0]),
            "emb_in": (out_f, t.shape[1]), "emb_out": (in_f, t.shape[0]),
        }[kind]
        if expected != actual:
            raise InvalidParameter(
                f"Adapter does not fit base model: {t.name} has shape {list(t.shape)}, but "
                f"{module}.weight in {base_dir} has shape {list(base_shape)}")
