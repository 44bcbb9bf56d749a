"""Reading safetensors checkpoints' headers without loading their data (the node lays out
backbones from them; the control plane validates adapters against them)."""
from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

# safetensors dtype names → torch dtype attribute names
SAFETENSORS_DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8",
    "BOOL": "bool", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2",
}


class WeightsFormatError(ValueError):
    """A checkpoint or a shared image is not what it claims to be."""


@dataclass(frozen=True)
class SafetensorsTensor:
    name: str
    dtype: str
    shape: tuple[int, ...]
    path: Path
    file_offset_bytes: int
    nbytes: int


def read_safetensors_header(path: Path) -> list[SafetensorsTensor]:
    """Parse a .safetensors header (8-byte little-endian length + JSON) without loading data."""
    with open(path, "rb") as fh:
        raw_len = fh.read(8)
        if len(raw_len) != 8:
            raise WeightsFormatError(f"{path.name}: too short to be a safetensors file")
        (header_len,) = struct.unpack("<Q", raw_len)
        size = os.fstat(fh.fileno()).st_size
        if header_len > min(size - 8, 100 << 20):
            raise WeightsFormatError(f"{path.name}: corrupt safetensors header length")
        try:
            header = json.loads(fh.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise WeightsFormatError(f"{path.name}: safetensors header is not JSON: {exc}")
    if not isinstance(header, dict):
        raise WeightsFormatError(f"{path.name}: safetensors header is not an object")
    tensors = []
    base = 8 + header_len
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, end = info["data_offsets"]
            entry = SafetensorsTensor(name, str(info["dtype"]), tuple(int(d) for d in info["shape"]),
                                      path, base + int(begin), int(end) - int(begin))
        except (KeyError, TypeError, ValueError) as exc:
            raise WeightsFormatError(f"{path.name}: bad entry for {name!r}: {exc}")
        if entry.file_offset_bytes + entry.nbytes > size:
            raise WeightsFormatError(f"{path.name}: tensor {name!r} runs past the end of the file")
        tensors.append(entry)
    return tensors


def checkpoint_tensors(model_dir: Path) -> list[SafetensorsTensor]:
    """All tensors of a Hugging Face model directory (single or sharded safetensors)."""
    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise WeightsFormatError(f"{model_dir}: no *.safetensors weights found")
    tensors: list[SafetensorsTensor] = []
    for f in files:
        tensors.extend(read_safetensors_header(f))
    return tensors
