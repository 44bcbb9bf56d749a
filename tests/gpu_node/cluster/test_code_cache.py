"""Function code on another host: received by digest, checked against it, unpacked once."""
from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import pytest

from slfaas.errors import NodeError
from slfaas.gpu_node.cluster.code_cache import CodeCache


def _zip(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


def test_code_is_unpacked_once_under_its_digest(tmp_path: Path) -> None:
    cache = CodeCache(tmp_path)
    raw = _zip({"adapter_config.json": b"{}", "sub/handler.py": b"x = 1\n"})
    digest = hashlib.sha256(raw).hexdigest()
    assert not cache.has(digest)
    path = cache.put(digest, raw)
    assert path == tmp_path / digest and (path / "sub" / "handler.py").read_bytes() == b"x = 1\n"
    assert cache.has(digest) and cache.put(digest, raw) == path
    assert [p.name for p in tmp_path.iterdir()] == [digest]   # no temporary left behind


def test_bytes_that_are_not_the_digests_are_refused(tmp_path: Path) -> None:
    cache = CodeCache(tmp_path)
    raw = _zip({"a": b"1"})
    with pytest.raises(NodeError, match="do not have that digest"):
        cache.put(hashlib.sha256(b"other").hexdigest(), raw)
    for bad in ("../etc", "AB" * 32, "ab" * 31, ""):
        with pytest.raises(NodeError, match="not a code digest"):
            cache.has(bad)
    assert list(tmp_path.iterdir()) == []


def test_entries_that_would_leave_the_package_are_refused(tmp_path: Path) -> None:
    cache = CodeCache(tmp_path / "cache")
    for name in ("../escape.py", "/abs.py"):
        raw = _zip({name: b"boom"})
        with pytest.raises(NodeError, match="would leave the package"):
            cache.put(hashlib.sha256(raw).hexdigest(), raw)
    garbage = b"not a zip"
    with pytest.raises(NodeError, match="cannot unpack"):
        cache.put(hashlib.sha256(garbage).hexdigest(), garbage)
    assert list((tmp_path / "cache").iterdir()) == [] and not (tmp_path / "escape.py").exists()
