"""The CPU backbone: one sealed, read-only shared-memory image of a base model's weights.

The node copies a model's safetensors tensors once into a ``memfd`` and seals it against
writes (``F_SEAL_WRITE``): after that no process, root included, can change the bytes, and
an instance that writes through its read-only mapping gets SIGSEGV and dies alone. Instances
inherit the descriptor and map it ``PROT_READ``; the kernel shares the pages, so N instances
cost one copy of the weights.

Image layout: ``b"SLFAASW1"`` | u64 header length | JSON header | pad | tensor bytes. Each
tensor starts at a 64-byte aligned offset so ``torch.frombuffer`` views need no copy.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

MAGIC = b"SLFAASW1"
_ALIGN_BYTES = 64
_DATA_ALIGN_BYTES = 4096
_COPY_CHUNK_BYTES = 64 << 20

# safetensors dtype names → torch dtype attribute names
SAFETENSORS_DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8",
    "BOOL": "bool", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2",
}


class WeightsFormatError(ValueError):
    """A checkpoint or a shared image is not what it claims to be."""


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: str          # safetensors name, e.g. "F16"
    shape: tuple[int, ...]
    offset_bytes: int   # from the start of the image
    nbytes: int


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


def _align(n: int, to: int) -> int:
    return (n + to - 1) // to * to


@dataclass(frozen=True)
class SharedImage:
    """A sealed memfd holding one model's weights; owned by the node, inherited by instances."""

    fd: int
    size_bytes: int
    tensors: tuple[TensorEntry, ...]
    data_bytes: int

    def close(self) -> None:
        os.close(self.fd)

    def checksum(self) -> str:
        """sha256 of the whole image, read through the (sealed) descriptor."""
        h = hashlib.sha256()
        pos = 0
        while pos < self.size_bytes:
            chunk = os.pread(self.fd, min(_COPY_CHUNK_BYTES, self.size_bytes - pos), pos)
            if not chunk:
                break
            h.update(chunk)
            pos += len(chunk)
        return h.hexdigest()


def build_shared_image(model_dir: Path, name: str = "backbone") -> SharedImage:
    """Copy a checkpoint's tensors into a new sealed memfd (the only copy instances use)."""
    sources = checkpoint_tensors(model_dir)
    for t in sources:
        if t.dtype not in SAFETENSORS_DTYPES:
            raise WeightsFormatError(f"tensor {t.name!r} has unsupported dtype {t.dtype}")
    entries: list[TensorEntry] = []
    offset = 0
    for t in sources:
        offset = _align(offset, _ALIGN_BYTES)
        entries.append(TensorEntry(t.name, t.dtype, t.shape, offset, t.nbytes))
        offset += t.nbytes
    data_bytes = offset
    # Offsets in the header are relative to the data section, whose start the header gives.
    table = [[e.name, e.dtype, list(e.shape), e.offset_bytes, e.nbytes] for e in entries]
    header = json.dumps({"data_start": 0, "tensors": table}).encode()
    data_start = _align(len(MAGIC) + 8 + len(header) + 32, _DATA_ALIGN_BYTES)
    header = json.dumps({"data_start": data_start, "tensors": table}).encode()
    entries = [TensorEntry(e.name, e.dtype, e.shape, e.offset_bytes + data_start, e.nbytes)
               for e in entries]
    size = data_start + data_bytes
    fd = os.memfd_create(f"slfaas-{name}", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.ftruncate(fd, size)
        os.pwrite(fd, MAGIC + struct.pack("<Q", len(header)) + header, 0)
        for src, dst in zip(sources, entries):
            with open(src.path, "rb") as fh:
                copied = 0
                while copied < src.nbytes:
                    n = min(_COPY_CHUNK_BYTES, src.nbytes - copied)
                    buf = os.pread(fh.fileno(), n, src.file_offset_bytes + copied)
                    if len(buf) != n:
                        raise WeightsFormatError(f"{src.path.name}: short read of {src.name!r}")
                    written = os.pwrite(fd, buf, dst.offset_bytes + copied)
                    copied += written
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_WRITE | fcntl.F_SEAL_GROW
                    | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL)
    except BaseException:
        os.close(fd)
        raise
    return SharedImage(fd=fd, size_bytes=size, tensors=tuple(entries), data_bytes=data_bytes)


def read_image_table(mapped: mmap.mmap) -> list[TensorEntry]:
    if mapped[: len(MAGIC)] != MAGIC:
        raise WeightsFormatError("not an slfaas shared weight image")
    (header_len,) = struct.unpack("<Q", mapped[len(MAGIC): len(MAGIC) + 8])
    start = len(MAGIC) + 8
    header = json.loads(mapped[start: start + header_len])
    base = int(header["data_start"])
    return [TensorEntry(n, d, tuple(s), base + o, b) for n, d, s, o, b in header["tensors"]]


def map_image(fd: int) -> mmap.mmap:
    """Map an inherited image descriptor read-only (PROT_READ, shared pages)."""
    return mmap.mmap(fd, 0, access=mmap.ACCESS_READ)


def iter_tensors(mapped: mmap.mmap) -> Iterator[tuple[str, "object"]]:
    """Yield (name, torch tensor viewing the read-only mapping): zero-copy."""
    import warnings

    import torch

    with warnings.catch_warnings():
        # torch warns that the buffer is not writable: that is the point.
        warnings.filterwarnings("ignore", message=".*not writable.*")
        for e in read_image_table(mapped):
            dtype = getattr(torch, SAFETENSORS_DTYPES[e.dtype])
            numel = 1
            for d in e.shape:
                numel *= d
            if numel == 0:
                yield e.name, torch.empty(e.shape, dtype=dtype)
                continue
            t = torch.frombuffer(mapped, dtype=dtype, count=numel, offset=e.offset_bytes)
            yield e.name, t.view(e.shape)
