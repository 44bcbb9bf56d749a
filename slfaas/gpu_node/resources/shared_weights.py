"""The CPU backbone: one sealed, read-only shared-memory image of a base model's weights.

The node copies a model's safetensors tensors once into a ``memfd`` and seals it against
writes (``F_SEAL_WRITE``): after that no process, root included, can change the bytes, and
an instance that writes through its read-only mapping gets SIGSEGV and dies alone. Instances
inherit the descriptor and map it ``PROT_READ`` (``slfaas.weights.image``); the kernel
shares the pages, so N instances cost one copy of the weights.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from slfaas.weights.image import ALIGN_BYTES, TensorEntry, encode_header
from slfaas.weights.safetensors import SAFETENSORS_DTYPES, WeightsFormatError, checkpoint_tensors

_COPY_CHUNK_BYTES = 64 << 20


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
    relative: list[TensorEntry] = []
    offset = 0
    for t in sources:
        offset = _align(offset, ALIGN_BYTES)
        relative.append(TensorEntry(t.name, t.dtype, t.shape, offset, t.nbytes))
        offset += t.nbytes
    data_bytes = offset
    # Offsets in the header are relative to the data section, whose start the header gives.
    head, data_start = encode_header([[e.name, e.dtype, list(e.shape), e.offset_bytes, e.nbytes] for e in relative])
    entries = [TensorEntry(e.name, e.dtype, e.shape, e.offset_bytes + data_start, e.nbytes) for e in relative]
    size = data_start + data_bytes
    fd = os.memfd_create(f"slfaas-{name}", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.ftruncate(fd, size)
        os.pwrite(fd, head, 0)
        for src, dst in zip(sources, entries):
            with open(src.path, "rb") as fh:
                copied = 0
                while copied < src.nbytes:
                    n = min(_COPY_CHUNK_BYTES, src.nbytes - copied)
                    buf = os.pread(fh.fileno(), n, src.file_offset_bytes + copied)
                    if len(buf) != n:
                        raise WeightsFormatError(f"{src.path.name}: short read of {src.name!r}")
                    copied += os.pwrite(fd, buf, dst.offset_bytes + copied)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_WRITE | fcntl.F_SEAL_GROW
                    | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL)
    except BaseException:
        os.close(fd)
        raise
    return SharedImage(fd=fd, size_bytes=size, tensors=tuple(entries), data_bytes=data_bytes)
