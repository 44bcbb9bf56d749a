"""The CPU backbone image: its layout, and how a runtime reads it (zero-copy, read-only).

Layout: ``b"SLFAASW1"`` | u64 header length | JSON header | pad | tensor bytes. Each tensor
starts at a 64-byte aligned offset so ``torch.frombuffer`` views need no copy. The node writes
it once into a sealed memfd (``slfaas.gpu_node.resources.shared_weights``); runtimes map the
descriptor ``PROT_READ``.
"""
from __future__ import annotations

import json
import mmap
import os
import socket
import stat
import struct
from dataclasses import dataclass
from typing import Iterator

from slfaas.weights.safetensors import SAFETENSORS_DTYPES, WeightsFormatError

MAGIC = b"SLFAASW1"
ALIGN_BYTES = 64
DATA_ALIGN_BYTES = 4096


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: str          # safetensors name, e.g. "F16"
    shape: tuple[int, ...]
    offset_bytes: int   # from the start of the image
    nbytes: int


def encode_header(table: list[list]) -> tuple[bytes, int]:
    """(the image's first bytes, the data section's start) for a tensor table whose offsets
    are relative to the data section."""
    header = json.dumps({"data_start": 0, "tensors": table}).encode()
    data_start = (len(MAGIC) + 8 + len(header) + 32 + DATA_ALIGN_BYTES - 1) // DATA_ALIGN_BYTES * DATA_ALIGN_BYTES
    header = json.dumps({"data_start": data_start, "tensors": table}).encode()
    return MAGIC + struct.pack("<Q", len(header)) + header, data_start


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


# The one message on a backbone socket (SLFAAS_BACKBONE_PATH), with its descriptors (SCM_RIGHTS):
HANDOUT_IMAGE = b"B"    # the sealed host-memory image
HANDOUT_VMM = b"V"      # the GPU arena's VMM descriptor, then its tensor table


def receive_backbone(path: str) -> tuple[bytes, list[int]]:
    """The node's answer on a backbone socket: (``HANDOUT_IMAGE`` or ``HANDOUT_VMM``, the
    descriptors). A container reaches the node's memfd or GPU arena this way (neither lives
    on a mounted filesystem): the pages are the node's, never copied."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(60)
        sock.connect(path)
        msg, fds, _flags, _addr = socket.recv_fds(sock, 16, 4)
    wanted = {HANDOUT_IMAGE: 1, HANDOUT_VMM: 2}.get(msg)
    if wanted is None or len(fds) < wanted:
        for fd in fds:
            os.close(fd)
        raise RuntimeError(f"the node sent no backbone descriptor on {path} (message {msg!r}, {len(fds)} fd)")
    for extra in fds[wanted:]:
        os.close(extra)
    return msg, fds[:wanted]


def open_image_path(path: str) -> int:
    """A read-only descriptor of the host-memory backbone image named by ``path``: a regular
    file (opened ``O_RDONLY``) or the node's socket (``receive_backbone``)."""
    if not stat.S_ISSOCK(os.stat(path).st_mode):
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    kind, fds = receive_backbone(path)
    if kind != HANDOUT_IMAGE:
        for fd in fds:
            os.close(fd)
        raise RuntimeError(f"{path} hands over a GPU arena, not a host-memory image")
    return fds[0]


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
