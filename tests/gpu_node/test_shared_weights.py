"""The sealed shared backbone image: exact bytes, read-only for everyone, format errors caught."""
from __future__ import annotations

import fcntl
import hashlib
import json
import mmap
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from slfaas.gpu_node.resources.shared_weights import build_shared_image
from slfaas.weights.image import MAGIC, iter_tensors, map_image, read_image_table
from slfaas.weights.safetensors import WeightsFormatError, read_safetensors_header


@pytest.fixture(scope="module")
def image(tiny_assets):  # type: ignore[no-untyped-def]
    img = build_shared_image(tiny_assets.base, name="test")
    yield img
    img.close()


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def test_every_tensor_equals_the_checkpoint(image, tiny_assets) -> None:  # type: ignore[no-untyped-def]
    expected = _weights(tiny_assets.base)
    mapped = map_image(image.fd)
    try:
        got = dict(iter_tensors(mapped))
        assert set(got) == set(expected)
        for name, t in expected.items():
            assert got[name].dtype == t.dtype, name
            assert got[name].shape == t.shape, name
            assert torch.equal(got[name], t), name
        # zero-copy: every tensor's data lies in the mapping, at its table offset
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            base_ptr = torch.frombuffer(mapped, dtype=torch.uint8, count=1).data_ptr()
        offsets = {e.name: e.offset_bytes for e in image.tensors}
        for name, t in got.items():
            assert t.data_ptr() == base_ptr + offsets[name], name
        del got
    finally:
        mapped.close()


def test_image_table_matches_and_is_aligned(image) -> None:  # type: ignore[no-untyped-def]
    mapped = map_image(image.fd)
    try:
        assert mapped[: len(MAGIC)] == MAGIC
        assert read_image_table(mapped) == list(image.tensors)
    finally:
        mapped.close()
    assert all(e.offset_bytes % 64 == 0 for e in image.tensors)
    assert image.size_bytes == os.fstat(image.fd).st_size
    assert image.data_bytes >= sum(e.nbytes for e in image.tensors)
    last = max(image.tensors, key=lambda e: e.offset_bytes)
    assert last.offset_bytes + last.nbytes == image.size_bytes


def test_image_is_sealed_against_writes(image) -> None:  # type: ignore[no-untyped-def]
    seals = fcntl.fcntl(image.fd, fcntl.F_GET_SEALS)
    for seal in (fcntl.F_SEAL_WRITE, fcntl.F_SEAL_GROW, fcntl.F_SEAL_SHRINK, fcntl.F_SEAL_SEAL):
        assert seals & seal, seal
    before = image.checksum()
    # a fresh writable descriptor of the same memfd cannot write either
    wfd = os.open(f"/proc/self/fd/{image.fd}", os.O_RDWR)
    try:
        with pytest.raises(PermissionError):
            os.pwrite(wfd, b"\0" * 16, 0)
        with pytest.raises(PermissionError):
            os.ftruncate(wfd, 0)
    finally:
        os.close(wfd)
    with pytest.raises(PermissionError):
        mmap.mmap(image.fd, 0, access=mmap.ACCESS_WRITE)
    with pytest.raises(PermissionError):  # and the seals themselves are sealed
        fcntl.fcntl(image.fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_FUTURE_WRITE if hasattr(fcntl, "F_SEAL_FUTURE_WRITE")
                    else fcntl.F_SEAL_WRITE)
    assert image.checksum() == before


def test_checksum_is_stable_and_content_addressed(image, tiny_assets) -> None:  # type: ignore[no-untyped-def]
    c1 = image.checksum()
    assert c1 == image.checksum()
    mapped = map_image(image.fd)
    try:
        assert c1 == hashlib.sha256(mapped[:]).hexdigest()
    finally:
        mapped.close()
    again = build_shared_image(tiny_assets.base)
    other = build_shared_image(tiny_assets.other_base)
    try:
        assert again.checksum() == c1
        assert other.checksum() != c1
    finally:
        again.close()
        other.close()


_CHILD = r"""
import ctypes, os, sys
fd = int(sys.argv[1]); size = os.fstat(fd).st_size
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
addr = libc.mmap(None, size, 1, 1, fd, 0)  # PROT_READ, MAP_SHARED: how instances map the image
assert addr not in (None, ctypes.c_void_p(-1).value), ctypes.get_errno()
print(ctypes.string_at(addr, 8).decode(), flush=True)
if sys.argv[2] == "write":
    ctypes.memset(addr + int(sys.argv[3]), 0x7F, 64)
print("survived", flush=True)
"""


def _child(fd: int, mode: str, offset: int = 0) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _CHILD, str(fd), mode, str(offset)], pass_fds=(fd,),
                          capture_output=True, text=True, timeout=30)


def test_write_through_mapping_kills_only_the_child(image) -> None:  # type: ignore[no-untyped-def]
    before = image.checksum()
    reader = _child(image.fd, "read")  # the same child, reading only, is fine
    assert reader.returncode == 0, reader.stderr
    assert reader.stdout.split() == [MAGIC.decode(), "survived"]

    writer = _child(image.fd, "write", image.tensors[0].offset_bytes)
    assert writer.returncode == -11, (writer.returncode, writer.stderr)  # SIGSEGV
    assert writer.stdout.split() == [MAGIC.decode()]  # mapped and read, died on the write
    assert image.checksum() == before  # the parent (and the bytes) are untouched


# format errors
def _copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_truncated_safetensors_is_rejected(tiny_assets, tmp_path) -> None:  # type: ignore[no-untyped-def]
    d = _copy_model(tiny_assets.base, tmp_path / "m")
    f = d / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(WeightsFormatError, match="past the end"):
        build_shared_image(d)


@pytest.mark.parametrize("raw, match", [
    (b"\x01\x02\x03", "too short"),
    (struct.pack("<Q", 1 << 40) + b"{}", "header length"),
    (struct.pack("<Q", 4) + b"\xff\xfe{}", "not JSON"),
    (struct.pack("<Q", 2) + b"[]", "not an object"),
    (struct.pack("<Q", 20) + b'{"w": {"dtype": 1}} ', "bad entry"),
])
def test_corrupt_safetensors_is_rejected(tmp_path, raw, match) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "model.safetensors").write_bytes(raw)
    with pytest.raises(WeightsFormatError, match=match):
        build_shared_image(tmp_path)


def test_unsupported_dtype_is_rejected(tmp_path) -> None:  # type: ignore[no-untyped-def]
    header = json.dumps({"w": {"dtype": "C64", "shape": [1], "data_offsets": [0, 8]}}).encode()
    (tmp_path / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 8)
    with pytest.raises(WeightsFormatError, match="unsupported dtype"):
        build_shared_image(tmp_path)


def test_directory_without_safetensors_is_rejected(tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"\0" * 16)
    with pytest.raises(WeightsFormatError, match="no \\*.safetensors"):
        build_shared_image(tmp_path)


def test_sharded_checkpoint_and_dtypes_roundtrip(tmp_path) -> None:  # type: ignore[no-untyped-def]
    tensors = {
        "a.f16": torch.arange(7, dtype=torch.float16),
        "b.bf16": torch.randn(3, 5).to(torch.bfloat16),
        "c.i64": torch.tensor([[1, -2], [3, 4]], dtype=torch.int64),
        "d.bool": torch.tensor([True, False, True]),
        "e.empty": torch.zeros(0, 4),
    }
    save_file({k: tensors[k] for k in ("a.f16", "b.bf16")}, str(tmp_path / "model-00001-of-00002.safetensors"))
    save_file({k: tensors[k] for k in ("c.i64", "d.bool", "e.empty")},
              str(tmp_path / "model-00002-of-00002.safetensors"))
    img = build_shared_image(tmp_path)
    mapped = map_image(img.fd)
    try:
        got = dict(iter_tensors(mapped))
        assert set(got) == set(tensors)
        for k, t in tensors.items():
            assert got[k].dtype == t.dtype and torch.equal(got[k], t), k
        del got
    finally:
        mapped.close()
        img.close()
    assert len(read_safetensors_header(tmp_path / "model-00002-of-00002.safetensors")) == 3
