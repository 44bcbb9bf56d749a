"""capped_lines: an instance's output as lines of bounded size, whatever the chunking."""
from __future__ import annotations

import pytest

from slfaas.gpu_node.sandboxes.loglines import TRUNCATED, capped_lines


def _split(data: bytes, size: int) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


@pytest.mark.parametrize("chunk", [1, 3, 7, 64, 10_000])
def test_lines_whatever_the_chunking(chunk: int) -> None:
    data = b"one\ntwo\n\nthree without newline"
    assert list(capped_lines(_split(data, chunk), max_line_bytes=16)) == [b"one", b"two", b"", b"three without ne"
                                                                          + TRUNCATED % 16]


@pytest.mark.parametrize("chunk", [1, 5, 16, 17, 1000])
def test_long_line_is_cut_marked_and_the_rest_dropped(chunk: int) -> None:
    data = b"a" * 100 + b"\nnext\n" + b"b" * 16 + b"\n" + b"c" * 17
    out = list(capped_lines(_split(data, chunk), max_line_bytes=16))
    assert out == [b"a" * 16 + TRUNCATED % 16, b"next", b"b" * 16, b"c" * 16 + TRUNCATED % 16]


def test_an_endless_line_is_handed_on_once_at_the_cap() -> None:
    """A line that never ends is handed on once, at the cap; nothing of it is kept after."""
    produced = 0

    def endless():  # type: ignore[no-untyped-def]
        nonlocal produced
        while produced < 50 << 20:
            produced += 1 << 16
            yield b"z" * (1 << 16)

    lines = capped_lines(endless(), max_line_bytes=1024)
    first = next(lines)
    assert first == b"z" * 1024 + TRUNCATED % 1024
    assert list(lines) == []
    assert produced == 50 << 20
