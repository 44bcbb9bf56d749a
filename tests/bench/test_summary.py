"""Summary statistics of replay records, checked against values computed by hand."""
from __future__ import annotations

import json

import pytest

from slfaas.bench import Percentiles, RequestRecord, join_server_records, summarize


def _rec(i: int, ttft_ms: float | None, e2e_ms: float | None, *, scheduled_s: float = 0.0, error: str | None = None,
         cold: bool | None = None, rid: str | None = None, out: int = 4) -> RequestRecord:
    return RequestRecord(
        index=i, function="f", scheduled_s=scheduled_s, sent_s=scheduled_s + 0.001,
        first_byte_s=None if ttft_ms is None else scheduled_s + ttft_ms / 1000,
        end_s=None if e2e_ms is None else scheduled_s + e2e_ms / 1000, prompt_tokens=8, output_tokens=out,
        request_id=rid, error_type=error, error=error and "boom", cold_start=cold)


def test_percentiles_by_linear_interpolation() -> None:
    p = Percentiles.of([float(v) for v in range(1, 101)])   # 1..100
    # rank (n-1)q between order statistics: 1 + 99q
    assert (p.count, p.mean, p.p50, p.p90, p.p99, p.max) == pytest.approx((100, 50.5, 50.5, 90.1, 99.01, 100.0))
    assert Percentiles.of([]) == Percentiles(0, None, None, None, None, None)
    one = Percentiles.of([7.0])
    assert (one.p50, one.p99, one.max) == (7.0, 7.0, 7.0)


def test_latency_counts_from_the_scheduled_arrival() -> None:
    r = RequestRecord(index=0, function="f", scheduled_s=1.0, sent_s=3.0, first_byte_s=3.5, end_s=4.0,
                      prompt_tokens=1, output_tokens=1)
    assert r.ttft_ms == pytest.approx(2500) and r.e2e_ms == pytest.approx(3000)
    assert r.client_lag_ms == pytest.approx(2000)


def test_summary() -> None:
    records = [_rec(i, ttft_ms=100.0 * (i + 1), e2e_ms=100.0 * (i + 1) + 50, scheduled_s=float(i), cold=i < 2, out=10)
               for i in range(8)]
    records += [_rec(8, None, None, scheduled_s=8.0, error="TooManyRequestsException", cold=False),
                _rec(9, 50.0, 60.0, scheduled_s=9.0, error="Unhandled", cold=False)]   # failed after a first byte
    s = summarize(records, slo_ms=350.0)
    assert (s.requests, s.completed, s.errors) == (10, 8, 2)
    assert s.errors_by_type == (("TooManyRequestsException", 1), ("Unhandled", 1))
    assert s.ttft_ms.count == 8 and s.ttft_ms.p50 == pytest.approx(450.0)    # of 100..800
    assert s.e2e_ms.max == pytest.approx(850.0)
    assert s.slo_attainment == pytest.approx(3 / 10)      # 100, 200, 300 ms; errors count as misses
    assert s.cold_starts == 2
    assert s.makespan_s == pytest.approx(9.06)            # scheduled 0.0 → the last end, 9.06
    assert s.throughput_rps == pytest.approx(8 / 9.06)
    assert s.output_tokens_per_s == pytest.approx(80 / 9.06)
    json.dumps(s.to_json())                               # JSON-ready
    assert s.to_json()["errors_by_type"] == {"TooManyRequestsException": 1, "Unhandled": 1}


def test_cold_starts_unknown_until_joined_and_no_slo() -> None:
    s = summarize([_rec(0, 10.0, 20.0)])
    assert s.cold_starts is None and s.slo_attainment is None


def test_join_by_request_id() -> None:
    records = [_rec(0, 10.0, 20.0, rid="a"), _rec(1, 10.0, 20.0, rid="b"), _rec(2, None, None, error="X")]
    server = {"b": {"request_id": "b", "cold_start": True, "status": "success", "prompt_tokens": 8,
                    "completion_tokens": 4, "instance_id": "i-1", "init_duration_ms": 1234.5, "queue_ms": 0.5,
                    "ttft_ms": 3.0},
              "z": {"request_id": "z", "cold_start": False}}
    joined = join_server_records(records, server)
    assert joined[0] == records[0] and joined[2] == records[2]    # unknown to the server: unchanged
    b = joined[1]
    assert (b.cold_start, b.server_status, b.server_prompt_tokens, b.server_completion_tokens, b.instance_id,
            b.init_duration_ms, b.server_queue_ms, b.server_ttft_ms) == (True, "success", 8, 4, "i-1", 1234.5, 0.5, 3.0)
    assert RequestRecord.from_json(json.loads(json.dumps(b.to_json()))) == b
