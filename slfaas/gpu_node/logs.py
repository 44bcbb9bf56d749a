"""Per-function logs: every instance's stdout/stderr and the node's START/END/REPORT lines,
one append-only file per function under ``<data-dir>/logs``."""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path


class FunctionLogs:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def path(self, function_name: str) -> Path:
        return self.root / f"{function_name}.log"

    def append(self, function_name: str, source: str, line: str) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{int(time.time() * 1000) % 1000:03d}Z"
        with self._lock, open(self.path(function_name), "a", encoding="utf-8") as fh:
            fh.write(f"{stamp} [{source}] {line}\n")

    def tail(self, function_name: str, max_bytes: int = 64 * 1024) -> str:
        path = self.path(function_name)
        if not path.exists():
            return ""
        with open(path, "rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            fh.seek(max(0, size - max_bytes))
            data = fh.read()
        if size > max_bytes:  # drop the partial first line
            data = data.split(b"\n", 1)[-1]
        return data.decode("utf-8", "replace")

    def remove(self, function_name: str) -> None:
        try:
            self.path(function_name).unlink()
        except FileNotFoundError:
            pass
