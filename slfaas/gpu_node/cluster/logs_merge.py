"""One function's log across several nodes: each node keeps its own file, and a reader gets
their lines merged in time order with one offset that says where each node's file continues.

The offset packs each node's byte offset into 48 bits at the node's slot (its join order), so
with a single node (slot 0) it is that node's own offset, as before there were several."""
from __future__ import annotations

from typing import Mapping

from slfaas.gpu_node.logs import parse_stamp
from slfaas.gpu_node.types import LogChunk

SLOT_BITS = 48
_MASK = (1 << SLOT_BITS) - 1


def pack_offsets(offsets: Mapping[int, int]) -> int:
    return sum(min(off, _MASK) << (SLOT_BITS * slot) for slot, off in offsets.items())


def unpack_offsets(packed: int, slots: list[int]) -> dict[int, int]:
    return {slot: (packed >> (SLOT_BITS * slot)) & _MASK for slot in slots}


def _stamped_lines(text: str, slot: int) -> list[tuple[float, int, int, str]]:
    """(time, slot, position, line); a line without a stamp (a runtime's multi-line output)
    keeps the time of the line before it, so it stays with it."""
    out = []
    ts = 0.0
    for pos, line in enumerate(text.splitlines(keepends=True)):
        stamp = parse_stamp(line.encode("utf-8", "replace"))
        ts = stamp if stamp is not None else ts
        out.append((ts, slot, pos, line))
    return out


def merge(chunks: Mapping[int, LogChunk], max_bytes: int | None = None) -> LogChunk:
    """The chunks' lines in time order (ties: slot, then position); with ``max_bytes``, only the
    last lines that fit (a tail). The offset packs every chunk's ``next_offset``. One node's
    chunk is passed through as it is (its file's order)."""
    if len(chunks) == 1:
        (slot, chunk), = chunks.items()
        return LogChunk(chunk.text, pack_offsets({slot: chunk.next_offset}))
    lines = sorted(line for slot, chunk in chunks.items() for line in _stamped_lines(chunk.text, slot))
    texts = [line[3] for line in lines]
    if max_bytes is not None:
        kept: list[str] = []
        size = 0
        for t in reversed(texts):
            size += len(t.encode("utf-8", "replace"))
            if size > max_bytes:
                break
            kept.append(t)
        texts = kept[::-1]
    return LogChunk("".join(texts), pack_offsets({slot: c.next_offset for slot, c in chunks.items()}))
