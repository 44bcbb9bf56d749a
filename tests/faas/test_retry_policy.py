"""Lambda's retry schedule for asynchronous invocations (IO-free)."""
from __future__ import annotations

import pytest

from slfaas.faas.retry_policy import EventRetryPolicy


def test_default_is_two_retries_one_then_two_minutes() -> None:
    p = EventRetryPolicy()
    assert p.after_error(1, 0.0, 0.0) == 60.0
    assert p.after_error(2, 0.0, 60.0) == 120.0
    assert p.after_error(3, 0.0, 180.0) is None


def test_no_retry_past_the_maximum_age() -> None:
    p = EventRetryPolicy(max_event_age_s=100.0)
    assert p.after_error(1, 0.0, 30.0) == 60.0
    assert p.after_error(1, 0.0, 50.0) is None


def test_throttle_backoff_grows_and_caps_until_max_age() -> None:
    p = EventRetryPolicy(throttle_backoff_s=1.0, throttle_backoff_max_s=8.0, max_event_age_s=100.0)
    assert [p.after_throttle(n, 0.0, 0.0) for n in (1, 2, 3, 4, 5, 9)] == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert p.after_throttle(3, 0.0, 97.0) is None


def test_from_env() -> None:
    p = EventRetryPolicy.from_env({"SLFAAS_EVENT_RETRY_DELAYS_S": "0.2, 0.4", "SLFAAS_EVENT_MAX_AGE_S": "30",
                                   "SLFAAS_EVENT_THROTTLE_BACKOFF_S": "0.1"})
    assert (p.retry_delays_s, p.max_retries, p.max_event_age_s, p.throttle_backoff_s) == ((0.2, 0.4), 2, 30.0, 0.1)
    assert EventRetryPolicy.from_env({}) == EventRetryPolicy()
    assert EventRetryPolicy.from_env({"SLFAAS_EVENT_RETRY_DELAYS_S": ","}).after_error(1, 0, 0) is None


def test_invalid_policies() -> None:
    with pytest.raises(ValueError):
        EventRetryPolicy(retry_delays_s=(-1.0,))
    with pytest.raises(ValueError):
        EventRetryPolicy(max_retries=2, retry_delays_s=())
