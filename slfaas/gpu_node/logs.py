"""Per-function logs: every instance's stdout/stderr and the node's START/END/REPORT lines,
one append-only file per function under ``<data-dir>/logs``.

Readers follow a log by byte offset (``read``: each chunk says where the next one starts, as
``aws logs tail --follow`` pages with a token) or start at a time (``since_ts``: the lines are
appended in time order, so the first line at or after it is found by bisection)."""
from __future__ import annotations

import calendar
import os
import threading
import time
from pathlib import Path
from typing import BinaryIO

from slfaas.gpu_node.types import LogChunk

_STAMP_FORMAT = "%Y-%m-%dT%H:%M:%S"


def format_stamp(ts: float) -> str:
    ms = int(ts * 1000)  # one clock reading for both parts, so stamps never go backwards
    return time.strftime(_STAMP_FORMAT, time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"


def parse_stamp(line: bytes) -> float | None:
    """The epoch seconds of a log line's ``2024-01-01T00:00:00.000Z`` prefix, or None."""
    try:
        head = line[:24].decode("ascii")
        if head[19] != "." or head[23] != "Z":
            return None
        return calendar.timegm(time.strptime(head[:19], _STAMP_FORMAT)) + int(head[20:23]) / 1000
    except (UnicodeDecodeError, ValueError, IndexError):
        return None


class FunctionLogs:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def path(self, function_name: str) -> Path:
        return self.root / f"{function_name}.log"

    def append(self, function_name: str, source: str, line: str) -> None:
        stamp = format_stamp(time.time())
        with self._lock, open(self.path(function_name), "a", encoding="utf-8") as fh:
            fh.write(f"{stamp} [{source}] {line}\n")

    def read_tail(self, function_name: str, max_bytes: int = 64 * 1024) -> LogChunk:
        """The last ``max_bytes`` bytes (whole lines), and the offset where the log ends."""
        try:
            fh = open(self.path(function_name), "rb")
        except FileNotFoundError:
            return LogChunk("", 0)
        with fh:
            size = fh.seek(0, os.SEEK_END)
            fh.seek(max(0, size - max_bytes))
            data = fh.read(size)
        if size > max_bytes:  # drop the partial first line
            data = data.split(b"\n", 1)[-1]
        return LogChunk(data.decode("utf-8", "replace"), size)

    def read(self, function_name: str, offset: int | None = None, since_ts: float | None = None,
             max_bytes: int = 256 * 1024) -> LogChunk:
        """Whole lines from ``offset`` (a previous chunk's ``next_offset``), else from the first
        line stamped at or after ``since_ts``, else from the start; at most ``max_bytes``. A line
        still being written stays for the next read. An offset past the end means the log was
        removed and begun again (the function was deleted and re-created): read from the start."""
        try:
            fh = open(self.path(function_name), "rb")
        except FileNotFoundError:
            return LogChunk("", 0)
        with fh:
            size = fh.seek(0, os.SEEK_END)
            if offset is None or offset > size:
                offset = _first_line_since(fh, size, since_ts) if since_ts is not None else 0
            fh.seek(offset)
            data = fh.read(max(1, max_bytes))
        end = data.rfind(b"\n") + 1
        if end == 0 and len(data) >= max_bytes:
            end = len(data)  # one line longer than max_bytes: hand it over in pieces
        return LogChunk(data[:end].decode("utf-8", "replace"), offset + end)

    def remove(self, function_name: str) -> None:
        try:
            self.path(function_name).unlink()
        except FileNotFoundError:
            pass


def _line_start(fh: BinaryIO, pos: int) -> int:
    """The start of the first line that begins at or after ``pos``."""
    if pos == 0:
        return 0
    fh.seek(pos - 1)
    fh.readline()
    return fh.tell()


def _first_line_since(fh: BinaryIO, size: int, since_ts: float) -> int:
    lo, hi = 0, size
    while lo < hi:
        mid = (lo + hi) // 2
        start = _line_start(fh, mid)
        if start >= size:
            hi = mid
            continue
        fh.seek(start)
        stamp = parse_stamp(fh.readline())
        if stamp is not None and stamp >= since_ts:
            hi = mid
        else:
            lo = mid + 1
    return _line_start(fh, lo)
