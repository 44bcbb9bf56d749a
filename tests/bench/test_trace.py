"""Reading the Azure LLM inference trace format: the bundled trace as its README describes it,
and every kind of bad input as one TraceError naming the file and line."""
from __future__ import annotations

from pathlib import Path

import pytest

from slfaas.bench import Trace, TraceError, TraceRequest, read_azure_csv

ROOT = Path(__file__).resolve().parents[2]
CONV = ROOT / "bench" / "data" / "AzureLLMInferenceTrace_conv.csv"
HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens"


def _csv(tmp_path: Path, text: str, name: str = "t.csv", newline: str = "\n") -> Path:
    path = tmp_path / name
    path.write_bytes(text.replace("\n", newline).encode())
    return path


def test_bundled_conversation_trace_matches_its_readme() -> None:
    trace = read_azure_csv(CONV)
    assert len(trace.requests) == 19366
    assert trace.span_s == pytest.approx(3501.7219, abs=1e-3)   # 18:15:46.6805900 → 19:14:08.4025270
    assert trace.requests[0] == TraceRequest(0.0, 374, 44)
    prompts = [r.prompt_tokens for r in trace.requests]
    outputs = [r.output_tokens for r in trace.requests]
    assert (min(prompts), max(prompts), min(outputs), max(outputs)) == (2, 14050, 7, 1000)
    assert sum(prompts) / len(prompts) == pytest.approx(1154.70, abs=0.01)
    assert all(b.arrival_s >= a.arrival_s for a, b in zip(trace.requests, trace.requests[1:]))


def test_seven_fractional_digits_and_crlf(tmp_path: Path) -> None:
    path = _csv(tmp_path, f"{HEADER}\n2023-11-16 23:59:59.9999999,10,5\n2023-11-17 00:00:01.0000001,1,1",
                newline="\r\n")
    trace = read_azure_csv(path)
    assert [r.prompt_tokens for r in trace.requests] == [10, 1]
    assert trace.requests[1].arrival_s == pytest.approx(1.0000002, abs=1e-6)   # across midnight


def test_columns_in_any_order_numeric_timestamps_bom_and_blank_lines(tmp_path: Path) -> None:
    path = _csv(tmp_path, "\ufeffGeneratedTokens,TIMESTAMP,ContextTokens\n7,100.5,3\n\n9,102.0,4\n")
    trace = read_azure_csv(path)
    assert trace.requests == (TraceRequest(0.0, 3, 7), TraceRequest(1.5, 4, 9))
    assert trace.source == "t.csv"


@pytest.mark.parametrize("text, match", [
    ("", "is empty"),
    (HEADER + "\n", "has a header but no requests"),
    ("time,in,out\n1,2,3\n", "header lacks TIMESTAMP, ContextTokens, GeneratedTokens"),
    ("TIMESTAMP,ContextTokens\n1,2\n", "header lacks GeneratedTokens"),
    (f"{HEADER}\n1,2,3\n2,x,3\n", "t.csv line 3: ContextTokens must be an integer, got 'x'"),
    (f"{HEADER}\n1,2,-3\n", "line 2: GeneratedTokens must be >= 0, got -3"),
    (f"{HEADER}\n1,2.5,3\n", "ContextTokens must be an integer, got '2.5'"),
    (f"{HEADER}\nyesterday,2,3\n", "line 2: TIMESTAMP must be"),
    (f"{HEADER}\n2023-11-16 18:15:46.x,2,3\n", "line 2: TIMESTAMP must be"),
    (f"{HEADER}\nnan,2,3\n", "line 2: TIMESTAMP must be"),
    (f"{HEADER}\n1,2,3,4\n", "line 2: expected 3 fields, got 4"),
    (f"{HEADER}\n1,2\n", "line 2: expected 3 fields, got 2"),
    (f"{HEADER}\n5,1,1\n4,1,1\n", "line 3: TIMESTAMP goes back in time"),
    (f'{HEADER}\n"1,2,3\n', "not valid CSV|expected 3 fields"),
])
def test_bad_csv_is_one_trace_error(tmp_path: Path, text: str, match: str) -> None:
    with pytest.raises(TraceError, match=match) as info:
        read_azure_csv(_csv(tmp_path, text))
    assert "\n" not in str(info.value)


def test_unreadable_or_binary_files(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match="cannot read trace .*missing.csv"):
        read_azure_csv(tmp_path / "missing.csv")
    with pytest.raises(TraceError, match="cannot read trace"):
        read_azure_csv(tmp_path)   # a directory
    binary = tmp_path / "b.csv"
    binary.write_bytes(b"\xff\xfe\x00\x81garbage\x00")
    with pytest.raises(TraceError, match="not a UTF-8 text CSV"):
        read_azure_csv(binary)


def _trace(*arrivals: float) -> Trace:
    return Trace(tuple(TraceRequest(a, i + 1, 2 * i + 1) for i, a in enumerate(arrivals)), "x.csv")


def test_slices_are_rebased_and_half_open() -> None:
    t = _trace(0.0, 1.0, 2.0, 3.0, 4.0)
    s = t.slice(1.0, 2.0)
    assert [r.arrival_s for r in s.requests] == [0.0, 1.0]          # 1.0 and 2.0; 3.0 is outside
    assert [r.prompt_tokens for r in s.requests] == [2, 3]
    assert [r.arrival_s for r in t.slice(2.5).requests] == [0.5, 1.5]
    assert len(t.slice(0.0, None, 3).requests) == 3
    assert t.slice() == t


@pytest.mark.parametrize("kwargs, match", [
    ({"start_s": 10.0}, r"the slice from 10 s on of x.csv holds no requests \(the trace spans 4.0 s\)"),
    ({"start_s": 0.5, "duration_s": 0.4}, r"the slice \[0.5 s, 0.9 s\) of x.csv holds no requests"),
    ({"duration_s": 0.0}, "--duration must be a number of seconds > 0"),
    ({"duration_s": float("nan")}, "--duration must be"),
    ({"start_s": -1.0}, "slice start must be"),
    ({"max_requests": 0}, "--max-requests must be at least 1"),
])
def test_empty_or_invalid_slices(kwargs: dict, match: str) -> None:
    with pytest.raises(TraceError, match=match):
        _trace(0.0, 1.0, 4.0).slice(**kwargs)
