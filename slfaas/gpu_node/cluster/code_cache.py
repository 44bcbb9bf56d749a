"""A node's copy of function code on another host: each zip is received once, by its digest,
checked against that digest and unpacked under the node's data dir; later uses find it there.

The control plane validated the zip when it was deployed; the digest check makes the copy the
same bytes, and unpacking still refuses entries that would leave the directory."""
from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import stat
import threading
import zipfile
from pathlib import Path, PurePosixPath

from slfaas.errors import NodeError

_DIGEST = re.compile(r"[0-9a-f]{64}")


class CodeCache:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def path(self, sha256_hex: str) -> Path:
        if not _DIGEST.fullmatch(sha256_hex):
            raise NodeError(f"not a code digest: {sha256_hex!r}")
        return self.root / sha256_hex

    def has(self, sha256_hex: str) -> bool:
        return self.path(sha256_hex).is_dir()

    def put(self, sha256_hex: str, zip_bytes: bytes) -> Path:
        """Unpack ``zip_bytes`` as ``sha256_hex`` (a no-op when present). Raises NodeError when
        the bytes are not that digest's or cannot be unpacked safely."""
        dest = self.path(sha256_hex)
        if hashlib.sha256(zip_bytes).hexdigest() != sha256_hex:
            raise NodeError(f"code {sha256_hex[:12]}: the bytes received do not have that digest")
        with self._lock:
            if dest.is_dir():
                return dest
            tmp = self.root / f".{sha256_hex}.{os.getpid()}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            try:
                _extract(zip_bytes, tmp)
                os.replace(tmp, dest)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        return dest


def _extract(zip_bytes: bytes, dest: Path) -> None:
    dest.mkdir(parents=True)
    try:
        with zipfile.ZipFile(io.BytesIO(zip_bytes)) as zf:
            for info in zf.infolist():
                path = PurePosixPath(info.filename)
                if path.is_absolute() or ".." in path.parts or stat.S_ISLNK(info.external_attr >> 16):
                    raise NodeError(f"code zip entry {info.filename!r} would leave the package")
                target = dest.joinpath(*path.parts)
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise NodeError(f"cannot unpack code: {exc}") from exc
