"""The adaptive bound on running batches (AIMD) and the virtual token counter."""
from __future__ import annotations

import pytest

from slfaas.gpu_node.policy.arbitration import ConcurrencyLimit, VirtualTokenCounter

A, B, C = ("a", "r"), ("b", "r"), ("c", "r")


def test_the_limit_halves_once_per_dispatch_generation_and_grows_back_additively() -> None:
    lim = ConcurrencyLimit(1, 8)
    assert lim.limit == 8
    seqs = [lim.dispatched() for _ in range(4)]
    lim.observe(seqs[0], congested=True)
    assert lim.limit == 4
    lim.observe(seqs[1], congested=True)       # dispatched before the cut: nothing new
    assert lim.limit == 4
    later = lim.dispatched()
    lim.observe(later, congested=True)
    assert lim.limit == 2
    lim.observe(lim.dispatched(), congested=False)   # +1/limit per good completion
    assert lim.value == pytest.approx(2.5) and lim.limit == 2
    for _ in range(2):
        lim.observe(lim.dispatched(), congested=False)
    assert lim.limit == 3
    for _ in range(100):
        lim.observe(lim.dispatched(), congested=False)
    assert lim.limit == 8                       # never above the ceiling
    for _ in range(10):
        lim.observe(lim.dispatched(), congested=True)
    assert lim.limit == 1                       # never below the floor


def test_limits_are_checked() -> None:
    with pytest.raises(ValueError):
        ConcurrencyLimit(0, 4)
    with pytest.raises(ValueError):
        ConcurrencyLimit(5, 4)


def test_an_idle_function_earns_no_credit_while_others_are_served() -> None:
    vtc = VirtualTokenCounter()
    vtc.activate(A, [])
    vtc.charge(A, 1000)
    vtc.activate(B, [A])                        # B was idle while A was served: it starts level with A
    assert vtc.counter(B) == 1000
    vtc.charge(B, 300)
    vtc.charge(A, 100)
    vtc.activate(C, [A, B])                     # the least counter of those waiting: A's
    assert vtc.counter(C) == 1100
    assert vtc.lead(B, [A, B, C]) == 200 and vtc.lead(A, [A, B, C]) == 0
    vtc.activate(A, [])                         # never lowered by activation
    assert vtc.counter(A) == 1100
