"""An instance's output as log lines of bounded size: a handler that prints hundreds of
megabytes without a newline must not make the node hold them (or write them) as one line."""
from __future__ import annotations

from typing import Iterable, Iterator

MAX_LINE_BYTES = 256 * 1024
TRUNCATED = b" [slfaas: line truncated at %d bytes]"


def capped_lines(chunks: Iterable[bytes], max_line_bytes: int = MAX_LINE_BYTES) -> Iterator[bytes]:
    """Split a byte stream into lines (without their newline). A line longer than
    ``max_line_bytes`` is handed on at once, cut there and marked, and the rest of it up to
    its newline is dropped; at most ``max_line_bytes`` are ever held."""
    pending = b""
    dropping = False
    for chunk in chunks:
        while chunk:
            newline = chunk.find(b"\n")
            piece, chunk = (chunk, b"") if newline < 0 else (chunk[:newline], chunk[newline + 1:])
            if not dropping:
                pending += piece[: max_line_bytes + 1 - len(pending)]
                if len(pending) > max_line_bytes:
                    yield pending[:max_line_bytes] + TRUNCATED % max_line_bytes
                    pending, dropping = b"", True
            if newline >= 0:
                if not dropping:
                    yield pending
                pending, dropping = b"", False
    if pending:
        yield pending
