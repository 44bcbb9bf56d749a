"""Code zips an attacker sends (each was seen to answer 500, or to deploy as Active and then
fail at every invoke): shared by the CodeStore unit tests and the live boto3 tests."""
from __future__ import annotations

import io
import json
import struct
import zipfile
from pathlib import Path
from typing import Any, Callable

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def adapter_files(adapter: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in adapter.iterdir() if p.is_file()}


def zip_of(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


def with_config(adapter: Path, **changes: Any) -> bytes:
    files = adapter_files(adapter)
    cfg = json.loads(files[ADAPTER_CONFIG])
    cfg.update(changes)
    files[ADAPTER_CONFIG] = json.dumps(cfg).encode()
    return zip_of(files)


def with_header(adapter: Path, mutate: Callable[[dict], Any]) -> bytes:
    """The adapter with its safetensors header rewritten: ``mutate`` edits the parsed header
    in place, or returns the header's new text (bytes or str) outright."""
    files = adapter_files(adapter)
    raw = files[ADAPTER_WEIGHTS]
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    out = mutate(header)
    text = out if out is not None else json.dumps(header)   # json.dumps writes inf as Infinity
    encoded = text.encode() if isinstance(text, str) else text
    files[ADAPTER_WEIGHTS] = struct.pack("<Q", len(encoded)) + encoded + raw[8 + n:]
    return zip_of(files)


def first_lora_key(header: dict) -> str:
    return next(k for k in header if k.endswith("lora_A.weight"))


def _set(key_of: Callable[[dict], str], field: str, value: Any) -> Callable[[dict], None]:
    def mutate(header: dict) -> None:
        header[key_of(header)][field] = value
    return mutate


def _reversed_offsets(header: dict) -> None:
    entry = header[first_lora_key(header)]
    entry["data_offsets"] = entry["data_offsets"][::-1]


def huge_unzipped(mb: int, files: dict[str, bytes] | None = None) -> bytes:
    """A small zip holding ``files`` and ``mb`` MiB of zeros (streamed: never in memory)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in (files or {}).items():
            zf.writestr(name, data)
        with zf.open("zeros.bin", "w", force_zip64=True) as fh:
            block = b"\0" * (1 << 20)
            for _ in range(mb):
                fh.write(block)
    return buf.getvalue()


BAD_ZIP_CASES = (
    "file-and-directory", "entry-name-300-chars", "2100-nested-directories",
    "config-100k-nested-brackets", "config-infinity", "base-model-5000-chars", "base-model-not-a-string",
    "target-modules-absent", "target-pattern-matches-nothing", "rank-not-integer", "rank-absurd", "rank-zero",
    "rank-not-the-tensors", "header-100k-nested-brackets", "shape-infinity", "offsets-infinity",
    "offsets-reversed", "offsets-negative", "offsets-past-the-end", "dtype-unknown", "dtype-not-float",
    "shape-not-integers")


def bad_zips(adapter: Path) -> dict[str, bytes]:
    """name → code zip that CreateFunction and UpdateFunctionCode must refuse with
    InvalidParameterValueException (the adapter is otherwise a good one)."""
    files = adapter_files(adapter)
    nested = "/".join(["d"] * 2100) + "/x.txt"
    return {
        "file-and-directory": zip_of({**files, "sub": b"a file", "sub/x": b"and a directory"}),
        "entry-name-300-chars": zip_of({**files, "a" * 300: b"x"}),
        "2100-nested-directories": zip_of({**files, nested: b"x"}),
        "config-100k-nested-brackets": zip_of({**files, ADAPTER_CONFIG: b"[" * 100_000 + b"]" * 100_000}),
        "config-infinity": with_config(adapter, lora_alpha=float("inf")),
        "base-model-5000-chars": with_config(adapter, base_model_name_or_path="m" * 5000),
        "base-model-not-a-string": with_config(adapter, base_model_name_or_path=["a", "b"]),
        "target-modules-absent": with_config(adapter, target_modules=["qkv_fused", "mlp_fused"]),
        "target-pattern-matches-nothing": with_config(adapter, target_modules=r".*\.attention\.wqkv"),
        "rank-not-integer": with_config(adapter, r=8.5),
        "rank-absurd": with_config(adapter, r=10**9),
        "rank-zero": with_config(adapter, r=0),
        "rank-not-the-tensors": with_config(adapter, r=4),
        "header-100k-nested-brackets": with_header(adapter, lambda h: "[" * 100_000 + "]" * 100_000),
        "shape-infinity": with_header(adapter, _set(first_lora_key, "shape", [float("inf"), 64])),
        "offsets-infinity": with_header(adapter, _set(first_lora_key, "data_offsets", [0, float("inf")])),
        "offsets-reversed": with_header(adapter, _reversed_offsets),
        "offsets-negative": with_header(adapter, _set(first_lora_key, "data_offsets", [-4096, 0])),
        "offsets-past-the-end": with_header(adapter, _set(first_lora_key, "data_offsets", [0, 1 << 40])),
        "dtype-unknown": with_header(adapter, _set(first_lora_key, "dtype", "F99")),
        "dtype-not-float": with_header(adapter, _set(first_lora_key, "dtype", "I32")),
        "shape-not-integers": with_header(adapter, _set(first_lora_key, "shape", [8.0, 128])),
    }
