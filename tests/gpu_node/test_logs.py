"""FunctionLogs: following a log by byte offset and starting it at a time."""
from __future__ import annotations

import calendar
import time
from pathlib import Path

import pytest

from slfaas.gpu_node.logs import FunctionLogs, format_stamp, parse_stamp


def _write(logs: FunctionLogs, name: str, stamped: list[tuple[float, str]]) -> None:
    with open(logs.path(name), "a", encoding="utf-8") as fh:
        for ts, line in stamped:
            fh.write(f"{format_stamp(ts)} [i] {line}\n")


def test_stamps_round_trip_and_never_go_backwards() -> None:
    t = calendar.timegm((2026, 3, 1, 12, 0, 59, 0, 0, 0)) + 0.9995
    assert format_stamp(t) == "2026-03-01T12:00:59.999Z"
    assert parse_stamp(format_stamp(t).encode() + b" [x] hi") == pytest.approx(t, abs=1e-3)
    assert format_stamp(t + 0.001) == "2026-03-01T12:01:00.000Z"  # seconds and ms from one reading
    for bad in (b"", b"hello world", b"2026-03-01T12:00:59,999Z x", b"2026-13-01T12:00:59.999Z x",
                b"\xff\xfe" * 20):
        assert parse_stamp(bad) is None


def test_offsets_follow_the_log(tmp_path: Path) -> None:
    logs = FunctionLogs(tmp_path)
    assert logs.read("fn", offset=0).text == "" and logs.read("fn").next_offset == 0  # no log yet
    logs.append("fn", "inst", "one")
    first = logs.read("fn", offset=0)
    assert first.text.endswith(" [inst] one\n") and first.next_offset == len(first.text.encode())
    assert logs.read("fn", offset=first.next_offset).text == ""  # nothing new: same offset back
    assert logs.read("fn", offset=first.next_offset).next_offset == first.next_offset
    logs.append("fn", "inst", "two ü")
    second = logs.read("fn", offset=first.next_offset)
    assert second.text.endswith(" [inst] two ü\n") and "one" not in second.text
    assert second.next_offset == logs.path("fn").stat().st_size
    assert logs.read_tail("fn").next_offset == second.next_offset


def test_a_line_being_written_waits_for_its_end(tmp_path: Path) -> None:
    logs = FunctionLogs(tmp_path)
    logs.path("fn").write_bytes(b"done\npart")
    chunk = logs.read("fn", offset=0)
    assert (chunk.text, chunk.next_offset) == ("done\n", 5)
    assert logs.read("fn", offset=5).text == ""
    with open(logs.path("fn"), "ab") as fh:
        fh.write(b"ial\n")
    assert logs.read("fn", offset=5).text == "partial\n"


def test_max_bytes_pages_whole_lines_and_splits_only_a_giant_line(tmp_path: Path) -> None:
    logs = FunctionLogs(tmp_path)
    logs.path("fn").write_bytes(b"aaaa\nbbbb\ncccc\n" + b"x" * 25 + b"\n")
    texts, offset = [], 0
    for _ in range(20):
        chunk = logs.read("fn", offset=offset, max_bytes=12)
        if not chunk.text:
            break
        assert len(chunk.text.encode()) <= 12
        texts.append(chunk.text)
        offset = chunk.next_offset
    assert "".join(texts) == logs.path("fn").read_text()
    assert texts[:2] == ["aaaa\nbbbb\n", "cccc\n"]


def test_since_finds_the_first_line_at_or_after(tmp_path: Path) -> None:
    logs = FunctionLogs(tmp_path)
    t0 = 1_700_000_000.0
    _write(logs, "fn", [(t0 + i, f"line {i}") for i in range(200)])
    for since, first in ((t0 - 5, 0), (t0, 0), (t0 + 0.5, 1), (t0 + 57, 57), (t0 + 199, 199)):
        chunk = logs.read("fn", since_ts=since)
        lines = chunk.text.splitlines()
        assert lines[0].endswith(f"line {first}") and lines[-1].endswith("line 199")
        assert len(lines) == 200 - first
    late = logs.read("fn", since_ts=t0 + 500)
    assert late.text == "" and late.next_offset == logs.path("fn").stat().st_size
    # an offset wins over since (a follower continues where it was)
    mid = logs.read("fn", since_ts=t0 + 150)
    assert logs.read("fn", offset=mid.next_offset, since_ts=t0).text == ""


def test_a_log_begun_again_is_read_from_its_start(tmp_path: Path) -> None:
    logs = FunctionLogs(tmp_path)
    for i in range(5):
        logs.append("fn", "inst", f"old {i}")
    old_end = logs.read("fn", offset=0).next_offset
    logs.remove("fn")  # the function was deleted and created again
    logs.append("fn", "inst", "new")
    chunk = logs.read("fn", offset=old_end)
    assert chunk.text.endswith("new\n") and "old" not in chunk.text


def test_append_stamps_are_now(tmp_path: Path) -> None:
    logs = FunctionLogs(tmp_path)
    before = time.time()
    logs.append("fn", "inst", "x")
    stamp = parse_stamp(logs.path("fn").read_bytes())
    assert stamp is not None and before - 0.002 <= stamp <= time.time()
