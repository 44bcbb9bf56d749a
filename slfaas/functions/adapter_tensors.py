"""An adapter's safetensors weights from a file, a descriptor or a bytes buffer, read in place.

The node may hand a runtime its adapter as a file in the function's code, a descriptor of a
host-tier copy, or bytes; all three are one buffer here, parsed with bounds checks (the
adapter is user input) and viewed as tensors without a copy, so specialising a runtime copies
each weight exactly once: from the buffer into its slot.
"""
from __future__ import annotations

import json
import math
import mmap
import os
import struct
import tempfile
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Union

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
MAX_HEADER_BYTES = 100 << 20
_ITEM_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
               "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}
_TORCH_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16"}


Buffer = Union[memoryview, mmap.mmap]


class AdapterFormatError(ValueError):
    """The adapter's weights or config are not what they claim to be."""


@dataclass(frozen=True)
class TensorRecord:
    name: str
    dtype: str                  # safetensors name, e.g. "F16"
    shape: tuple[int, ...]
    offset_bytes: int           # from the start of the buffer
    nbytes: int


def parse_safetensors(buf: Buffer) -> dict[str, TensorRecord]:
    """The tensor table of a safetensors buffer; every entry checked to lie inside it."""
    size = len(buf)
    if size < 8:
        raise AdapterFormatError("adapter weights: too short to be a safetensors file")
    (header_len,) = struct.unpack_from("<Q", buf, 0)
    if header_len > min(size - 8, MAX_HEADER_BYTES):
        raise AdapterFormatError("adapter weights: corrupt safetensors header length")
    try:
        header = json.loads(bytes(buf[8:8 + header_len]))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AdapterFormatError(f"adapter weights: header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise AdapterFormatError("adapter weights: header is not an object")
    base = 8 + header_len
    records = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = str(info["dtype"])
            shape = tuple(int(d) for d in info["shape"])
            begin, end = (int(v) for v in info["data_offsets"])
        except (KeyError, TypeError, ValueError) as exc:
            raise AdapterFormatError(f"adapter weights: bad entry for {name!r}: {exc}") from None
        if dtype not in _ITEM_BYTES or any(d < 0 for d in shape):
            raise AdapterFormatError(f"adapter weights: {name!r} has dtype {dtype} shape {list(shape)}")
        if not 0 <= begin <= end <= size - base or end - begin != math.prod(shape) * _ITEM_BYTES[dtype]:
            raise AdapterFormatError(f"adapter weights: {name!r} lies outside the file or has the wrong size")
        records[name] = TensorRecord(name, dtype, shape, base + begin, end - begin)
    return records


def tensor_view(buf: Buffer, record: TensorRecord) -> Any:
    """A CPU tensor over ``record``'s bytes (no copy unless the offset is misaligned)."""
    import torch

    if record.dtype not in _TORCH_DTYPES:
        raise AdapterFormatError(f"adapter weights: {record.name} is {record.dtype}, not a float tensor")
    dtype = getattr(torch, _TORCH_DTYPES[record.dtype])
    if record.nbytes == 0:
        return torch.empty(record.shape, dtype=dtype)
    src: Any = buf
    offset = record.offset_bytes
    if offset % _ITEM_BYTES[record.dtype]:
        src, offset = bytearray(buf[offset:offset + record.nbytes]), 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # a read-only buffer: we only ever read from the view
        flat = torch.frombuffer(src, dtype=dtype, count=record.nbytes // _ITEM_BYTES[record.dtype],
                                offset=offset)
    return flat.view(record.shape)


@dataclass(frozen=True)
class AdapterSource:
    """One adapter as a runtime receives it: its config and its weights as exactly one of a
    file path, a read-only descriptor (e.g. a host-tier memfd) or bytes. ``directory``, when
    known, is the adapter's directory for PEFT's loader (the slow path)."""

    config: Mapping[str, Any]
    weights_path: Path | None = None
    weights_fd: int | None = None
    weights_bytes: bytes | None = None
    directory: Path | None = None

    def __post_init__(self) -> None:
        given = [w is not None for w in (self.weights_path, self.weights_fd, self.weights_bytes)]
        if sum(given) != 1:
            raise ValueError("an adapter source has exactly one of weights_path, weights_fd, weights_bytes")

    @classmethod
    def from_dir(cls, directory: Path) -> "AdapterSource":
        directory = Path(directory)
        return cls(read_config(directory / ADAPTER_CONFIG), weights_path=directory / ADAPTER_WEIGHTS,
                   directory=directory)

    @contextmanager
    def buffer(self) -> Iterator[Buffer]:
        """The weights' bytes, mapped read-only (file, descriptor) or as given (bytes)."""
        if self.weights_bytes is not None:
            yield memoryview(self.weights_bytes)
            return
        fd = self.weights_fd if self.weights_fd is not None else os.open(self.weights_path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            size = os.fstat(fd).st_size
            if size == 0:
                raise AdapterFormatError("adapter weights: empty file")
            mapping = mmap.mmap(fd, size, prot=mmap.PROT_READ)
        finally:
            if self.weights_fd is None:
                os.close(fd)   # the mapping keeps the pages
        try:
            yield mapping
        finally:
            try:
                mapping.close()
            except BufferError:
                pass   # a tensor view still refers to it: the mapping goes when that view does


    @contextmanager
    def directory_for_peft(self) -> Iterator[Path]:
        """A directory PEFT's loader can read: ``directory``, else a private temporary copy."""
        if self.directory is not None:
            yield self.directory
            return
        with tempfile.TemporaryDirectory(prefix="slfaas-adapter-") as tmp, self.buffer() as buf:
            (Path(tmp) / ADAPTER_CONFIG).write_text(json.dumps(dict(self.config)))
            (Path(tmp) / ADAPTER_WEIGHTS).write_bytes(bytes(buf))
            yield Path(tmp)


def read_config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AdapterFormatError(f"{ADAPTER_CONFIG}: {exc}") from None
    if not isinstance(config, dict):
        raise AdapterFormatError(f"{ADAPTER_CONFIG} must hold a JSON object")
    return config
