"""Adapter weights read in place from bytes, a file or a descriptor; hostile files refused."""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save

from slfaas.functions.adapter_tensors import (AdapterFormatError, AdapterSource, parse_safetensors,
                                              tensor_view)

TENSORS = {"m.lora_A.weight": torch.arange(12, dtype=torch.float32).view(3, 4),
           "m.lora_B.weight": torch.arange(8, dtype=torch.float16).view(4, 2),
           "odd.weight": torch.arange(3, dtype=torch.bfloat16)}


def _raw(header: dict, data: bytes) -> bytes:
    blob = json.dumps(header).encode()
    return struct.pack("<Q", len(blob)) + blob + data


def test_views_equal_the_saved_tensors_from_every_source(tmp_path: Path) -> None:
    raw = save(TENSORS)
    (tmp_path / "adapter_model.safetensors").write_bytes(raw)
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 3}))
    fd = os.memfd_create("adapter")
    os.write(fd, raw)
    sources = [AdapterSource({"r": 3}, weights_bytes=raw), AdapterSource.from_dir(tmp_path),
               AdapterSource({"r": 3}, weights_fd=fd)]
    try:
        for source in sources:
            with source.buffer() as buf:
                records = parse_safetensors(buf)
                assert set(records) == set(TENSORS)
                for name, expected in TENSORS.items():
                    view = tensor_view(buf, records[name])
                    assert view.dtype == expected.dtype and torch.equal(view, expected)
                    del view
        assert sources[1].config == {"r": 3}
    finally:
        os.close(fd)


def test_a_source_has_exactly_one_weights() -> None:
    with pytest.raises(ValueError):
        AdapterSource({})
    with pytest.raises(ValueError):
        AdapterSource({}, weights_bytes=b"x", weights_fd=3)


@pytest.mark.parametrize("raw", [
    b"",
    b"\x01\x02",
    struct.pack("<Q", 1 << 40) + b"{}",                                              # header longer than the file
    struct.pack("<Q", 5) + b"nope!",                                                 # not JSON
    _raw([1, 2], b""),                                                                # not an object
    _raw({"t": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 8),  # runs past the end
    _raw({"t": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}, b"\0" * 8),   # size != shape
    _raw({"t": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}, b"\0" * 8),   # reversed
    _raw({"t": {"dtype": "Q4", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8),    # unknown dtype
    _raw({"t": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, b"\0" * 8),
    _raw({"t": {"dtype": "F32"}}, b""),                                               # missing fields
])
def test_hostile_weights_are_refused(raw: bytes) -> None:
    with pytest.raises(AdapterFormatError):
        parse_safetensors(memoryview(raw))


def test_misaligned_tensor_is_copied_not_misread() -> None:
    data = b"\0" + struct.pack("<2f", 1.5, -2.0)
    raw = _raw({"t": {"dtype": "F32", "shape": [2], "data_offsets": [1, 9]}}, data)
    buf = memoryview(raw)
    assert torch.equal(tensor_view(buf, parse_safetensors(buf)["t"]), torch.tensor([1.5, -2.0]))


def test_peft_directory_from_bytes_is_temporary() -> None:
    raw = save(TENSORS)
    source = AdapterSource({"r": 3}, weights_bytes=raw)
    with source.directory_for_peft() as directory:
        assert json.loads((directory / "adapter_config.json").read_text()) == {"r": 3}
        assert (directory / "adapter_model.safetensors").read_bytes() == raw
    assert not directory.exists()
