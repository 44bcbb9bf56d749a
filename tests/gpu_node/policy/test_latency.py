"""The batch latency model T(b) = T0 + α(b − 1): fitted online from measured batches, per
function and prompt-length bucket, with fallbacks while data is thin."""
from __future__ import annotations

import pytest

from slfaas.gpu_node.policy.latency import LatencyModel, LatencyPrior, bucket

A, B = ("a", "r1"), ("b", "r1")


def test_a_line_is_recovered_from_batches_of_several_sizes() -> None:
    m = LatencyModel(prior=LatencyPrior(decay=1.0))
    for b in (1, 2, 4, 8, 1, 8):
        m.observe(A, 300, b, 40.0 + 10.0 * (b - 1))
    fit = m.fit(A, 300)
    assert fit.t0_ms == pytest.approx(40.0) and fit.alpha_ms == pytest.approx(10.0)
    assert m.estimate_ms(A, 300, 5) == pytest.approx(80.0)


def test_recent_batches_outweigh_old_ones() -> None:
    m = LatencyModel(prior=LatencyPrior(decay=0.8))
    for _ in range(40):
        m.observe(A, 10, 1, 100.0)
    for _ in range(40):
        m.observe(A, 10, 1, 20.0)
    assert m.estimate_ms(A, 10, 1) == pytest.approx(20.0, rel=1e-3)


def test_one_batch_size_gives_the_prior_slope_through_the_mean() -> None:
    m = LatencyModel(prior=LatencyPrior(alpha_share=0.5))
    for _ in range(3):
        m.observe(A, 10, 1, 60.0)
    fit = m.fit(A, 10)
    assert fit.t0_ms == pytest.approx(60.0) and fit.alpha_ms == pytest.approx(30.0)
    m2 = LatencyModel(prior=LatencyPrior(alpha_share=0.5))
    for _ in range(3):
        m2.observe(A, 10, 3, 120.0)     # T0·(1 + 0.5·2) = 120
    assert m2.fit(A, 10).t0_ms == pytest.approx(60.0) and m2.estimate_ms(A, 10, 3) == pytest.approx(120.0)


def test_thin_buckets_fall_back_to_the_function_then_the_device_then_the_prior() -> None:
    prior = LatencyPrior(t0_ms=500.0, alpha_share=0.0)   # a level answers from two measurements
    m = LatencyModel(prior=prior)
    assert m.estimate_ms(A, 10, 1) == 500.0                  # nothing measured: the prior
    m.observe(B, 1000, 1, 70.0)
    assert m.estimate_ms(A, 10, 1) == 500.0                  # one measurement is not enough anywhere
    m.observe(B, 1000, 1, 70.0)
    assert m.estimate_ms(A, 10, 1) == pytest.approx(70.0)    # the device's, over every function
    m.observe(A, 1000, 1, 30.0)
    m.observe(A, 1000, 1, 30.0)
    assert m.estimate_ms(A, 10, 1) == pytest.approx(30.0)    # the function's, over its buckets
    m.observe(A, 10, 1, 10.0)
    m.observe(A, 10, 1, 10.0)
    assert m.estimate_ms(A, 10, 1) == pytest.approx(10.0)    # its own bucket
    assert bucket(10) != bucket(1000)


def test_measurements_are_normalised_by_their_contention() -> None:
    m = LatencyModel(prior=LatencyPrior(alpha_share=0.0))
    m.observe(A, 10, 1, 90.0, contention=3.0)
    m.observe(A, 10, 1, 30.0)
    assert m.estimate_ms(A, 10, 1) == pytest.approx(30.0)


def test_nonsense_measurements_are_ignored_and_a_falling_slope_is_flat() -> None:
    m = LatencyModel(prior=LatencyPrior(t0_ms=100.0, alpha_share=0.0, decay=1.0))
    for bad in (float("nan"), float("inf"), -1.0):
        m.observe(A, 10, 1, bad)
    m.observe(A, 10, 0, 5.0)
    assert m.fit(A, 10).weight == 0
    m.observe(A, 10, 1, 50.0)
    m.observe(A, 10, 8, 10.0)      # bigger batches faster: noise, not a negative α
    fit = m.fit(A, 10)
    assert fit.alpha_ms == 0.0 and fit.t0_ms == pytest.approx(30.0)


def test_cold_starts_are_averaged_per_function_with_the_device_as_fallback() -> None:
    m = LatencyModel(prior=LatencyPrior(cold_start_ms=9000.0))
    assert m.cold_start_ms(A) == 9000.0
    m.observe_cold_start(B, 1000.0)
    assert m.cold_start_ms(A) == pytest.approx(1000.0)
    m.observe_cold_start(A, 400.0)
    assert m.cold_start_ms(A) == pytest.approx(400.0)


def test_bad_priors_are_refused() -> None:
    for kwargs in ({"t0_ms": 0.0}, {"decay": 0.0}, {"decay": 1.5}, {"alpha_share": -1.0}, {"min_weight": 0.0}):
        with pytest.raises(ValueError):
            LatencyPrior(**kwargs)  # type: ignore[arg-type]
