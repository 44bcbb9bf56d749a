"""Traces: arrival times with prompt and output lengths, read from the Azure LLM inference
trace CSV format (``TIMESTAMP,ContextTokens,GeneratedTokens``) and cut into slices."""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from slfaas.bench.errors import TraceError

COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")


@dataclass(frozen=True)
class TraceRequest:
    arrival_s: float      # seconds after the trace's (or slice's) first instant
    prompt_tokens: int
    output_tokens: int


@dataclass(frozen=True)
class Trace:
    requests: tuple[TraceRequest, ...]   # in arrival order
    source: str                           # file name or synthetic spec, for the summary

    @property
    def span_s(self) -> float:
        return self.requests[-1].arrival_s if self.requests else 0.0

    def slice(self, start_s: float = 0.0, duration_s: float | None = None,
              max_requests: int | None = None) -> "Trace":
        """Requests arriving in ``[start_s, start_s + duration_s)`` (trace seconds), at most
        ``max_requests`` of them, re-based so the slice starts at 0. Empty is an error."""
        if not math.isfinite(start_s) or start_s < 0:
            raise TraceError(f"the slice start must be a number of seconds >= 0, got {start_s}")
        if duration_s is not None and (not math.isfinite(duration_s) or duration_s <= 0):
            raise TraceError(f"--duration must be a number of seconds > 0, got {duration_s}")
        if max_requests is not None and max_requests < 1:
            raise TraceError(f"--max-requests must be at least 1, got {max_requests}")
        end_s = math.inf if duration_s is None else start_s + duration_s
        picked = [r for r in self.requests if start_s <= r.arrival_s < end_s][:max_requests]
        if not picked:
            where = f"[{start_s:g} s, {end_s:g} s)" if duration_s is not None else f"from {start_s:g} s on"
            raise TraceError(f"the slice {where} of {self.source} holds no requests "
                             f"(the trace spans {self.span_s:.1f} s)")
        return Trace(tuple(TraceRequest(r.arrival_s - start_s, r.prompt_tokens, r.output_tokens) for r in picked),
                     self.source)


def _timestamp_s(text: str) -> float:
    """``YYYY-MM-DD HH:MM:SS[.fffffff]`` (any number of fractional digits: the Azure trace has
    7, more than ``datetime`` parses) or a plain number of seconds."""
    try:
        value = float(text)
    except ValueError:
        pass
    else:
        if not math.isfinite(value):
            raise ValueError(text)
        return value
    whole, _, frac = text.strip().partition(".")
    if frac and not frac.isdigit():
        raise ValueError(text)
    base = datetime.strptime(whole, "%Y-%m-%d %H:%M:%S")
    # naive: differences are all that matter, and the file gives no time zone
    return (base - datetime(1970, 1, 1)).total_seconds() + (float("0." + frac) if frac else 0.0)


def _count(text: str, column: str, where: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise TraceError(f"{where}: {column} must be an integer, got {text!r}") from None
    if value < 0:
        raise TraceError(f"{where}: {column} must be >= 0, got {value}")
    return value


def read_azure_csv(path: Path | str) -> Trace:
    """Read a trace in the Azure LLM inference trace format; arrivals become seconds after
    the first row. Timestamps must not decrease (as in the published traces)."""
    path = Path(path)
    try:
        fh = path.open(newline="", encoding="utf-8")
    except OSError as exc:
        raise TraceError(f"cannot read trace {path}: {exc.strerror or exc}") from None
    rows: list[tuple[float, int, int]] = []
    with fh:
        reader = csv.reader(fh)
        try:
            header = next(reader, None)
            if header is None:
                raise TraceError(f"{path} is empty: expected the header {','.join(COLUMNS)}")
            header = [h.strip().lstrip("\ufeff") for h in header]
            missing = [c for c in COLUMNS if c not in header]
            if missing:
                raise TraceError(f"{path}: the header lacks {', '.join(missing)} "
                                 f"(expected {','.join(COLUMNS)}, got {','.join(header)[:200]})")
            ts_col, in_col, out_col = (header.index(c) for c in COLUMNS)
            previous = -math.inf
            for row in reader:
                where = f"{path.name} line {reader.line_num}"
                if not row or all(not cell.strip() for cell in row):
                    continue
                if len(row) != len(header):
                    raise TraceError(f"{where}: expected {len(header)} fields, got {len(row)}")
                try:
                    ts = _timestamp_s(row[ts_col])
                except ValueError:
                    raise TraceError(f"{where}: TIMESTAMP must be 'YYYY-MM-DD HH:MM:SS.fff' or seconds, "
                                     f"got {row[ts_col][:40]!r}") from None
                if ts < previous:
                    raise TraceError(f"{where}: TIMESTAMP goes back in time ({row[ts_col]})")
                previous = ts
                rows.append((ts, _count(row[in_col], "ContextTokens", where),
                             _count(row[out_col], "GeneratedTokens", where)))
        except UnicodeDecodeError:
            raise TraceError(f"{path} is not a UTF-8 text CSV file") from None
        except csv.Error as exc:
            raise TraceError(f"{path} line {reader.line_num}: not valid CSV ({exc})") from None
    if not rows:
        raise TraceError(f"{path} has a header but no requests")
    t0 = rows[0][0]
    return Trace(tuple(TraceRequest(ts - t0, p, o) for ts, p, o in rows), path.name)
