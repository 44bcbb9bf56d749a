"""SLFAAS_GPU_TRIM_IDLE_S reaches every runtime from the node's environment, so a bad value
must not break runtimes or make their trim thread spin."""
from __future__ import annotations

from slfaas.functions.engine import MIN_TRIM_IDLE_S, _trim_idle_s


def test_unset_or_unreadable_is_the_default() -> None:
    assert _trim_idle_s(None) == 1.0
    assert _trim_idle_s("soon") == 1.0
    assert _trim_idle_s("nan") == 1.0


def test_zero_would_spin_so_it_is_raised_to_the_minimum() -> None:
    assert _trim_idle_s("0") == MIN_TRIM_IDLE_S
    assert _trim_idle_s("0.001") == MIN_TRIM_IDLE_S
    assert _trim_idle_s("30") == 30.0


def test_negative_or_infinite_turns_trimming_off() -> None:
    assert _trim_idle_s("-1") < 0
    assert _trim_idle_s("inf") < 0
    assert _trim_idle_s("-inf") < 0
