"""Merging one function's log lines from several nodes, and the one offset that follows them all."""
from __future__ import annotations

from slfaas.gpu_node.cluster.logs_merge import merge, pack_offsets, unpack_offsets
from slfaas.gpu_node.types import LogChunk


def test_one_node_offsets_are_its_own() -> None:
    assert pack_offsets({0: 12345}) == 12345
    assert unpack_offsets(12345, [0]) == {0: 12345}


def test_offsets_of_several_nodes_round_trip() -> None:
    offsets = {0: 7, 1: 0, 3: 2**40 + 5}
    assert unpack_offsets(pack_offsets(offsets), [0, 1, 2, 3]) == {**offsets, 2: 0}


def test_lines_merge_by_time_and_unstamped_lines_stay_with_theirs() -> None:
    a = LogChunk("2026-01-01T00:00:01.000Z [fn] a1\n  traceback of a1\n2026-01-01T00:00:03.000Z [fn] a3\n", 100)
    b = LogChunk("2026-01-01T00:00:02.000Z [fn] b2\n2026-01-01T00:00:03.000Z [fn] b3\n", 50)
    got = merge({0: a, 1: b})
    assert [line.rsplit(" ", 1)[-1] for line in got.text.splitlines()] == ["a1", "a1", "b2", "a3", "b3"]
    assert unpack_offsets(got.next_offset, [0, 1]) == {0: 100, 1: 50}


def test_a_tail_keeps_the_newest_lines_that_fit() -> None:
    a = LogChunk("".join(f"2026-01-01T00:00:0{i}.000Z [fn] a{i}\n" for i in range(0, 10, 2)), 10)
    b = LogChunk("".join(f"2026-01-01T00:00:0{i}.000Z [fn] b{i}\n" for i in range(1, 10, 2)), 20)
    got = merge({0: a, 1: b}, max_bytes=3 * len("2026-01-01T00:00:00.000Z [fn] a0\n"))
    assert [line.rsplit(" ", 1)[-1] for line in got.text.splitlines()] == ["b7", "a8", "b9"]


def test_one_nodes_chunk_passes_through_as_its_file_has_it() -> None:
    text = "2026-01-01T00:00:02.000Z [fn] later\n2026-01-01T00:00:01.000Z [fn] stamped earlier, written after\n"
    assert merge({0: LogChunk(text, 99)}, max_bytes=10) == LogChunk(text, 99)
