"""Synthetic arrivals: the asked rate and coefficient of variation, within statistical
tolerance for fixed seeds; the same seed gives the same arrivals; lengths come from trace rows."""
from __future__ import annotations

import math

import pytest

from slfaas.bench import ArrivalProcess, Trace, TraceError, TraceRequest, synthetic_trace


def _gap_stats(times: list[float]) -> tuple[float, float]:
    gaps = [b - a for a, b in zip([0.0] + times, times)]
    mean = sum(gaps) / len(gaps)
    std = math.sqrt(sum((g - mean) ** 2 for g in gaps) / (len(gaps) - 1))
    return mean, std / mean


@pytest.mark.parametrize("spec, rate, cv", [
    ("poisson:20", 20.0, 1.0),
    ("gamma:20:1", 20.0, 1.0),
    ("gamma:8:2.5", 8.0, 2.5),     # bursty
    ("gamma:50:0.3", 50.0, 0.3),   # smoother than Poisson
])
@pytest.mark.parametrize("seed", [0, 1, 7])
def test_rate_and_cv(spec: str, rate: float, cv: float, seed: int) -> None:
    duration_s = 20000 / rate          # about 20,000 arrivals: std error of the mean ~ cv/141
    times = ArrivalProcess.parse(spec).arrivals(duration_s, seed)
    assert all(0 <= t < duration_s for t in times) and times == sorted(times)
    mean_gap, got_cv = _gap_stats(times)
    assert mean_gap == pytest.approx(1 / rate, rel=5 * cv / math.sqrt(len(times)))
    assert len(times) / duration_s == pytest.approx(rate, rel=5 * cv / math.sqrt(len(times)))
    assert got_cv == pytest.approx(cv, rel=0.06)


def test_seeded_and_reproducible() -> None:
    p = ArrivalProcess.parse("gamma:5:2")
    assert p.arrivals(100, seed=3) == p.arrivals(100, seed=3)
    assert p.arrivals(100, seed=3) != p.arrivals(100, seed=4)


@pytest.mark.parametrize("spec", ["poisson", "poisson:", "poisson:0", "poisson:-1", "poisson:x", "poisson:1:2",
                                  "gamma:5", "gamma:5:0", "gamma:inf:1", "gamma:nan:1", "weibull:1", ""])
def test_bad_specs(spec: str) -> None:
    with pytest.raises(TraceError, match="bad synthetic arrivals"):
        ArrivalProcess.parse(spec)


def test_parse_and_spec_round_trip() -> None:
    assert ArrivalProcess.parse(" Gamma:2.5:3 ") == ArrivalProcess("gamma", 2.5, 3.0)
    assert ArrivalProcess.parse("poisson:4").spec == "poisson:4"
    assert ArrivalProcess.parse("gamma:2.5:3").spec == "gamma:2.5:3"


def test_synthetic_trace_draws_lengths_from_rows() -> None:
    rows = Trace(tuple(TraceRequest(float(i), 100 + i, 10 + i) for i in range(5)), "src.csv")
    trace = synthetic_trace(ArrivalProcess.parse("poisson:50"), 20.0, rows, seed=1)
    pairs = {(r.prompt_tokens, r.output_tokens) for r in trace.requests}
    assert pairs == {(100 + i, 10 + i) for i in range(5)}   # ~1000 draws cover all 5 rows, only those
    assert trace.source == "poisson:50 (lengths from src.csv)"
    assert trace == synthetic_trace(ArrivalProcess.parse("poisson:50"), 20.0, rows, seed=1)


def test_synthetic_errors() -> None:
    rows = Trace((TraceRequest(0.0, 1, 1),), "src.csv")
    with pytest.raises(TraceError, match="produced no requests"):
        synthetic_trace(ArrivalProcess.parse("poisson:0.001"), 1.0, rows, seed=0)
    with pytest.raises(TraceError, match="--duration must be"):
        synthetic_trace(ArrivalProcess.parse("poisson:1"), 0.0, rows, seed=0)
    with pytest.raises(TraceError, match="no requests to draw lengths from"):
        synthetic_trace(ArrivalProcess.parse("poisson:1"), 10.0, Trace((), "empty"), seed=0)
