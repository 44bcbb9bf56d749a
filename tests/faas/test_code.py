"""CodeStore: zip validation, digest naming, and the adapter/base shape check."""
from __future__ import annotations

import base64
import hashlib
import io
import json
import shutil
import stat
import zipfile
from pathlib import Path

import pytest

from slfaas.errors import InvalidParameter
from slfaas.faas.code import CodeStore, check_adapter_fits, validate_base_model_dir


def _zip(files: dict[str, bytes], symlinks: tuple[str, ...] = ()) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
        for name in symlinks:
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, "/etc/passwd")
    return buf.getvalue()


def _adapter_files(adapter: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in adapter.iterdir() if p.is_file()}


def _leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir())


@pytest.fixture
def store(tmp_path: Path) -> CodeStore:
    return CodeStore(tmp_path / "code")


def test_put_good_adapter_zip(store, tiny_assets) -> None:  # type: ignore[no-untyped-def]
    raw = tiny_assets.zip(tiny_assets.adapter_a)
    pkg = store.put(raw)
    digest = hashlib.sha256(raw).digest()
    assert pkg.sha256_hex == digest.hex()
    assert pkg.code_sha256_b64 == base64.b64encode(digest).decode()
    assert pkg.size_bytes == len(raw)
    assert pkg.zip_path.read_bytes() == raw
    assert pkg.dir_path == store.root / digest.hex()
    for name, data in _adapter_files(tiny_assets.adapter_a).items():
        assert (pkg.dir_path / name).read_bytes() == data
    assert pkg.adapter_base_model == str(tiny_assets.base)
    assert pkg.has_handler is False
    # same bytes again: same package, nothing else stored
    assert store.put(raw) == pkg
    assert _leftovers(store.root) == sorted([digest.hex(), f"{digest.hex()}.zip"])
    assert store.get(pkg.sha256_hex) == pkg


def test_put_with_handler_and_subdirectory(store, tiny_assets) -> None:  # type: ignore[no-untyped-def]
    raw = tiny_assets.zip(tiny_assets.adapter_a, {"handler.py": "def handler(e, c):\n    return e\n",
                                                  "lib/util.py": "X = 1\n"})
    pkg = store.put(raw)
    assert pkg.has_handler is True
    assert (pkg.dir_path / "lib" / "util.py").read_text() == "X = 1\n"


@pytest.mark.parametrize("raw", [b"", b"not a zip at all", b"PK\x03\x04" + b"\0" * 40])
def test_bad_zip_bytes(store, raw) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidParameter, match="Could not unzip"):
        store.put(raw)
    assert _leftovers(store.root) == []


def test_missing_adapter_config(store, tiny_assets) -> None:  # type: ignore[no-untyped-def]
    files = _adapter_files(tiny_assets.adapter_a)
    del files["adapter_config.json"]
    with pytest.raises(InvalidParameter, match="adapter_config.json"):
        store.put(_zip(files))
    assert _leftovers(store.root) == []


def test_missing_adapter_weights(store, tiny_assets) -> None:  # type: ignore[no-untyped-def]
    files = _adapter_files(tiny_assets.adapter_a)
    del files["adapter_model.safetensors"]
    with pytest.raises(InvalidParameter, match="no adapter_model.safetensors"):
        store.put(_zip(files))
    assert _leftovers(store.root) == []


def test_adapter_in_a_subfolder_is_not_at_the_root(store, tiny_assets) -> None:  # type: ignore[no-untyped-def]
    files = {f"adapter/{k}": v for k, v in _adapter_files(tiny_assets.adapter_a).items()}
    with pytest.raises(InvalidParameter, match="at its root"):
        store.put(_zip(files))


@pytest.mark.parametrize("config, match", [
    (b"{not json", "not valid JSON"),
    (b"[1, 2]", "JSON object"),
    (json.dumps({"peft_type": "IA3"}).encode(), "Only LoRA"),
])
def test_bad_adapter_config(store, tiny_assets, config, match) -> None:  # type: ignore[no-untyped-def]
    files = _adapter_files(tiny_assets.adapter_a)
    files["adapter_config.json"] = config
    with pytest.raises(InvalidParameter, match=match):
        store.put(_zip(files))


def test_weights_that_are_not_safetensors(store, tiny_assets) -> None:  # type: ignore[no-untyped-def]
    files = _adapter_files(tiny_assets.adapter_a)
    files["adapter_model.safetensors"] = b"\x00\x01"
    with pytest.raises(InvalidParameter, match="not a valid safetensors"):
        store.put(_zip(files))
    assert _leftovers(store.root) == []


@pytest.mark.parametrize("entry", ["../x", "a/../../x", "/abs/x"])
def test_zip_slip_entry_is_refused(store, tiny_assets, entry) -> None:  # type: ignore[no-untyped-def]
    files = _adapter_files(tiny_assets.adapter_a)
    files[entry] = b"owned"
    with pytest.raises(InvalidParameter, match="escapes the package root"):
        store.put(_zip(files))
    assert not (store.root.parent / "x").exists()
    assert not (store.root / "x").exists()
    assert _leftovers(store.root) == []


def test_symlink_entry_is_refused(store, tiny_assets) -> None:  # type: ignore[no-untyped-def]
    raw = _zip(_adapter_files(tiny_assets.adapter_a), symlinks=("link",))
    with pytest.raises(InvalidParameter, match="symbolic link"):
        store.put(raw)
    assert _leftovers(store.root) == []


def test_adapter_fits_its_base(tiny_assets) -> None:  # type: ignore[no-untyped-def]
    check_adapter_fits(tiny_assets.adapter_a, tiny_assets.base)
    check_adapter_fits(tiny_assets.misfit_adapter, tiny_assets.other_base)


def test_adapter_for_another_shape_does_not_fit(tiny_assets) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidParameter, match="does not fit base model"):
        check_adapter_fits(tiny_assets.misfit_adapter, tiny_assets.base)
    with pytest.raises(InvalidParameter, match="does not fit base model"):
        check_adapter_fits(tiny_assets.adapter_a, tiny_assets.other_base)


def test_adapter_for_a_module_the_base_lacks(tiny_assets, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from safetensors.torch import load_file, save_file

    adapter = tmp_path / "renamed"
    shutil.copytree(tiny_assets.adapter_a, adapter)
    w = load_file(str(adapter / "adapter_model.safetensors"))
    save_file({k.replace("q_proj", "qkv_fused"): v for k, v in w.items()}, str(adapter / "adapter_model.safetensors"))
    with pytest.raises(InvalidParameter, match="does not have"):
        check_adapter_fits(adapter, tiny_assets.base)
    save_file({"something.else": next(iter(w.values()))}, str(adapter / "adapter_model.safetensors"))
    with pytest.raises(InvalidParameter, match="no LoRA tensors"):
        check_adapter_fits(adapter, tiny_assets.base)


def test_validate_base_model_dir(tiny_assets, tmp_path) -> None:  # type: ignore[no-untyped-def]
    validate_base_model_dir(tiny_assets.base)
    with pytest.raises(InvalidParameter, match="config.json"):
        validate_base_model_dir(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(InvalidParameter, match="safetensors"):
        validate_base_model_dir(tmp_path)
