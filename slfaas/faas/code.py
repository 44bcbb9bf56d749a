"""Function code packages: validate a code zip, store it by digest (identical code shared),
and remove it once no function or version refers to it. The adapter inside is checked by
``adapter_check``, reading only its config and header (no torch import in the control plane)."""
from __future__ import annotations

import base64
import errno
import hashlib
import io
import os
import shutil
import stat
import threading
import zipfile
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator

from slfaas.errors import CodeStorageExceeded, InvalidParameter
from slfaas.faas import adapter_check
from slfaas.faas.adapter_check import ADAPTER_CONFIG, ADAPTER_WEIGHTS, read_adapter_config
from slfaas.weights.safetensors import WeightsFormatError, checkpoint_tensors

__all__ = ["ADAPTER_CONFIG", "ADAPTER_WEIGHTS", "CodePackage", "CodeStore", "check_adapter_fits",
           "read_adapter_config", "validate_base_model_dir"]

MAX_UNZIPPED_BYTES = 262_144_000      # AWS Lambda's limit for a function's unzipped code
MAX_ENTRIES = 20_000
MAX_ENTRY_NAME_BYTES = 1024           # a whole path inside the zip
MAX_PATH_PART_BYTES = 255             # one file or directory name (the file system's NAME_MAX)


@dataclass(frozen=True)
class CodePackage:
    """A stored code zip: AWS's CodeSha256 is the base64 of the zip's sha256 digest."""

    sha256_hex: str
    code_sha256_b64: str
    size_bytes: int
    zip_path: Path
    dir_path: Path
    adapter_base_model: str | None
    has_handler: bool


class CodeStore:
    """Zips and their extracted trees under ``root``, named by digest. A package is kept while
    the registry refers to it (``in_use``) or a request holds it (``hold``: between storing
    the code and committing the function that refers to it); ``collect`` removes it after."""

    def __init__(self, root: Path, in_use: Callable[[str], bool] = lambda sha256_hex: True):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._in_use = in_use
        self._lock = threading.Lock()
        self._holds: Counter[str] = Counter()

    @contextmanager
    def hold(self, zip_bytes: bytes) -> Iterator[CodePackage]:
        """Store ``zip_bytes`` and keep the package while the block runs; afterwards it stays
        only if the registry refers to it (a rejected create or update leaves nothing)."""
        hex_ = hashlib.sha256(zip_bytes).hexdigest()
        with self._lock:
            self._holds[hex_] += 1
        try:
            yield self.put(zip_bytes)
        finally:
            with self._lock:
                self._holds[hex_] -= 1
                if self._holds[hex_] <= 0:
                    del self._holds[hex_]
            self.collect(hex_)

    def collect(self, sha256_hex: str) -> bool:
        """Remove the package unless a function or version refers to it or a request holds it."""
        with self._lock:
            if self._holds[sha256_hex] > 0 or self._in_use(sha256_hex):
                return False
            self._remove(sha256_hex)
            return True

    def sweep(self) -> int:
        """At start-up: remove every package nothing refers to (and half-written ones)."""
        removed = 0
        with self._lock:
            for entry in list(self.root.iterdir()):
                if entry.name.startswith("."):   # a put that never finished
                    if entry.is_dir():
                        shutil.rmtree(entry, ignore_errors=True)
                    else:
                        entry.unlink(missing_ok=True)
                    removed += 1
                    continue
                hex_ = entry.name.removesuffix(".zip")
                if self._holds[hex_] == 0 and not self._in_use(hex_):
                    self._remove(hex_)
                    removed += 1
        return removed

    def _remove(self, sha256_hex: str) -> None:
        shutil.rmtree(self.root / sha256_hex, ignore_errors=True)
        (self.root / f"{sha256_hex}.zip").unlink(missing_ok=True)

    def put(self, zip_bytes: bytes) -> CodePackage:
        digest = hashlib.sha256(zip_bytes)
        hex_ = digest.hexdigest()
        zip_path = self.root / f"{hex_}.zip"
        dir_path = self.root / hex_
        if not dir_path.is_dir():
            tmp = self.root / f".{hex_}.{os.getpid()}.{threading.get_ident()}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            try:
                _safe_extract(zip_bytes, tmp)
                read_adapter_config(tmp)
                if not (tmp / ADAPTER_WEIGHTS).is_file():
                    raise InvalidParameter(
                        f"The code zip has no {ADAPTER_WEIGHTS} at its root: a slfaas-lora function "
                        f"needs a PEFT LoRA adapter ({ADAPTER_CONFIG} + {ADAPTER_WEIGHTS}).")
                adapter_check.read_safetensors_header(tmp / ADAPTER_WEIGHTS)
                _write_file(zip_path, zip_bytes)
                try:
                    os.replace(tmp, dir_path)
                except OSError:  # a concurrent put of the same digest won
                    shutil.rmtree(tmp, ignore_errors=True)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        return self.get(hex_)

    def get(self, sha256_hex: str) -> CodePackage:
        dir_path = self.root / sha256_hex
        zip_path = self.root / f"{sha256_hex}.zip"
        cfg = read_adapter_config(dir_path)
        raw = bytes.fromhex(sha256_hex)
        return CodePackage(
            sha256_hex=sha256_hex,
            code_sha256_b64=base64.b64encode(raw).decode(),
            size_bytes=zip_path.stat().st_size,
            zip_path=zip_path,
            dir_path=dir_path,
            adapter_base_model=cfg.get("base_model_name_or_path") or None,
            has_handler=(dir_path / "handler.py").is_file(),
        )


def _storage_error(exc: OSError, what: str) -> Exception:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return CodeStorageExceeded(f"Code storage is full: no space left on the server's disk ({what})")
    return InvalidParameter(f"Could not unzip uploaded file ({what[:200]}): {exc.strerror or exc}")


def _write_file(path: Path, data: bytes) -> None:
    try:
        path.write_bytes(data)
    except OSError as exc:
        path.unlink(missing_ok=True)
        raise _storage_error(exc, path.name) from None


def _entry_paths(infos: list[zipfile.ZipInfo]) -> list[tuple[zipfile.ZipInfo, PurePosixPath]]:
    """Every entry's relative path, after refusing what cannot be extracted as written: paths
    out of the package, links, names the file system refuses (too long), and a name
    that is both a file and a directory (``sub`` and ``sub/x``)."""
    if len(infos) > MAX_ENTRIES:
        raise InvalidParameter(f"The code zip has {len(infos)} entries; at most {MAX_ENTRIES} are supported")
    out = []
    files: set[PurePosixPath] = set()
    dirs: set[PurePosixPath] = set()
    for info in infos:
        shown = info.filename[:200]
        path = PurePosixPath(info.filename)
        if path.is_absolute() or ".." in path.parts:
            raise InvalidParameter(f"Code zip entry {shown!r} escapes the package root")
        if stat.S_ISLNK(info.external_attr >> 16):
            raise InvalidParameter(f"Code zip entry {shown!r} is a symbolic link")
        encoded = info.filename.encode("utf-8", "surrogateescape")
        if (not path.parts or len(encoded) > MAX_ENTRY_NAME_BYTES
                or any(len(p.encode("utf-8", "surrogateescape")) > MAX_PATH_PART_BYTES for p in path.parts)):
            raise InvalidParameter(
                f"Code zip entry {shown!r} has a name this server cannot store: empty, longer than "
                f"{MAX_ENTRY_NAME_BYTES} bytes, or with a part longer than {MAX_PATH_PART_BYTES} bytes")
        parents = set(path.parents) - {PurePosixPath(".")}
        if info.is_dir():
            parents.add(path)
        elif path in files:
            raise InvalidParameter(f"Code zip entry {shown!r} appears twice")
        else:
            files.add(path)
        dirs.update(parents)
        out.append((info, path))
    clash = files & dirs
    if clash:
        raise InvalidParameter(f"Code zip entry {str(min(clash))[:200]!r} is both a file and a directory")
    return out


def _safe_extract(zip_bytes: bytes, dest: Path) -> None:
    try:
        zf = zipfile.ZipFile(io.BytesIO(zip_bytes))
        infos = zf.infolist()
    except (zipfile.BadZipFile, ValueError, OSError, EOFError):
        raise InvalidParameter("Could not unzip uploaded file. Please check your file, then try to upload again.")
    if sum(i.file_size for i in infos) > MAX_UNZIPPED_BYTES:
        raise InvalidParameter(f"Unzipped size must be smaller than {MAX_UNZIPPED_BYTES} bytes")
    entries = _entry_paths(infos)
    dest.mkdir(parents=True)
    with zf:
        for info, path in entries:
            target = dest.joinpath(*path.parts)
            try:
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
            except OSError as exc:
                raise _storage_error(exc, info.filename) from None
            except (zipfile.BadZipFile, EOFError, ValueError, NotImplementedError, RuntimeError) as exc:
                # NotImplementedError: a compression method zipfile lacks; RuntimeError: encrypted
                raise InvalidParameter(f"Could not unzip uploaded file ({info.filename[:200]}): {exc}") from None


def validate_base_model_dir(base_dir: Path) -> None:
    if not (Path(base_dir) / "config.json").is_file():
        raise InvalidParameter(f"Base model directory {base_dir} has no config.json")
    try:
        checkpoint_tensors(base_dir)
    except WeightsFormatError as exc:
        raise InvalidParameter(f"Base model {base_dir}: {exc}")


def check_adapter_fits(adapter_dir: Path, base_dir: Path) -> None:
    """Raise InvalidParameter unless the adapter fits the base model in ``base_dir``."""
    try:
        base = {t.name: t.shape for t in checkpoint_tensors(base_dir)}
    except WeightsFormatError as exc:
        raise InvalidParameter(str(exc))
    adapter_check.check_adapter_fits(adapter_dir, base, str(base_dir))
