"""Keep-alive policies on synthetic idle-time series: pure, no threads, no clock."""
from __future__ import annotations

import random

import pytest

from slfaas.gpu_node.policy.keepalive import (FixedKeepAlive, FunctionState, HistogramKeepAlive, IdleHistogram,
                                              KeepAliveDecision, decide, due_prewarms, expired, history_for,
                                              idle_expired, policy_for)
from slfaas.gpu_node.policy.view import InstanceView, NodeSnapshot

POLICY = HistogramKeepAlive(bin_width_s=1.0, range_s=120.0, min_samples=10, fallback_ttl_s=90.0,
                            out_of_bounds_ttl_s=30.0)


def replay(policy: HistogramKeepAlive, gaps_s: list[float], duration_s: float = 0.5) -> IdleHistogram:
    """Invocations of ``duration_s`` separated by idle gaps; returns the state after the last."""
    hist, t = IdleHistogram.empty(policy), 1000.0
    for gap in [0.0, *gaps_s]:
        t += gap
        hist = hist.invoked(t, t + duration_s)
        t += duration_s
    return hist


def test_fixed_ttl_is_the_default_behaviour() -> None:
    hist = IdleHistogram(1.0, (), idle_since_s=50.0)
    d = decide(FixedKeepAlive(600.0), hist, now_s=100.0)
    assert (d.prewarm_window_s, d.keep_alive_window_s, d.reason) == (0.0, 600.0, "fixed")
    assert d.keep_warm and d.warm_until_s == 650.0
    assert not decide(FixedKeepAlive(600.0), hist, now_s=650.0).keep_warm
    assert decide(FixedKeepAlive(), None, 0.0) == KeepAliveDecision(0.0, 600.0, "fixed")


def test_periodic_function_is_unloaded_and_pre_warmed_just_before_it_returns() -> None:
    rng = random.Random(1)
    gaps = [30.0 + rng.uniform(-0.4, 0.4) for _ in range(60)]
    hist = replay(POLICY, gaps)
    since = hist.idle_since_s
    assert since is not None
    d = decide(POLICY, hist, now_s=since + 1.0)
    assert d.reason == "histogram"
    assert 20.0 < d.prewarm_window_s < 29.6                       # head (29 s bin) less the margin
    assert d.prewarm_window_s + d.keep_alive_window_s > 30.4      # covers the tail
    assert d.keep_alive_window_s < 15.0                           # far less idle time than a fixed TTL
    assert not d.keep_warm and not d.prewarm_due                  # just finished: unloaded
    back = decide(POLICY, hist, now_s=since + 29.0)
    assert back.keep_warm and back.prewarm_due                    # loaded again before the next call
    assert not decide(POLICY, hist, now_s=since + d.prewarm_window_s + d.keep_alive_window_s).keep_warm


def test_bursty_function_stays_loaded_from_the_burst_to_the_next() -> None:
    gaps = []
    for _ in range(8):
        gaps += [0.2] * 10 + [75.0]   # bursts of 11 calls, then 75 s of quiet
    hist = replay(POLICY, gaps)
    d = decide(POLICY, hist, now_s=hist.idle_since_s or 0.0)
    assert d.reason == "histogram"
    assert d.prewarm_window_s == 0.0                # most idle times are tiny: never unload early
    assert 75.0 < d.keep_alive_window_s < 90.0      # but not for a whole fixed TTL
    assert d.keep_warm


def test_mostly_out_of_bounds_idle_times_fall_back() -> None:
    hist = replay(POLICY, [300.0, 500.0, 20.0, 900.0, 400.0, 250.0, 30.0, 1000.0, 600.0, 700.0, 350.0])
    assert hist.out_of_bounds == 9
    d = decide(POLICY, hist, now_s=hist.idle_since_s or 0.0)
    assert (d.reason, d.prewarm_window_s, d.keep_alive_window_s) == ("out_of_bounds", 0.0, 30.0)


def test_flat_histogram_is_low_confidence() -> None:
    rng = random.Random(2)
    hist = replay(POLICY, [rng.uniform(0, 119) for _ in range(1500)])
    assert hist.bin_cv() < POLICY.cv_threshold
    d = decide(POLICY, hist, now_s=hist.idle_since_s or 0.0)
    assert (d.reason, d.prewarm_window_s, d.keep_alive_window_s) == ("low_confidence", 0.0, 90.0)


def test_few_samples_and_no_history_fall_back_to_the_ttl() -> None:
    hist = replay(POLICY, [30.0] * 5)
    assert decide(POLICY, hist, 0.0).reason == "few_samples"
    assert decide(POLICY, replay(POLICY, [30.0] * 10), 0.0).reason == "histogram"
    d = decide(POLICY, None, 0.0)
    assert (d.reason, d.keep_alive_window_s, d.keep_warm) == ("no_history", 90.0, False)


def test_bin_width_is_configurable() -> None:
    fine = HistogramKeepAlive(bin_width_s=0.25, range_s=10.0)
    hist = replay(fine, [2.1] * 20, duration_s=0.1)
    d = decide(fine, hist, now_s=hist.idle_since_s or 0.0)
    assert d.reason == "histogram" and 1.7 < d.prewarm_window_s < 2.1 < d.prewarm_window_s + d.keep_alive_window_s < 3.0
    with pytest.raises(ValueError):
        decide(POLICY, hist, 0.0)   # a histogram of another shape


def test_overlapping_invocations_are_no_idle_time() -> None:
    hist = IdleHistogram.empty(POLICY).invoked(0.0, 10.0).invoked(5.0, 8.0)
    assert hist.counts[0] == 1 and hist.idle_since_s == 10.0   # the period ends at the later end


@pytest.mark.parametrize("kwargs", [
    {"bin_width_s": 0.0}, {"range_s": 0.5}, {"head_percentile": 99.0, "tail_percentile": 5.0},
    {"margin": 1.0}, {"min_samples": 0}, {"fallback_ttl_s": -1.0}, {"bin_width_s": 1e-6},
])
def test_bad_policies_are_refused(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        HistogramKeepAlive(**kwargs)
    with pytest.raises(ValueError):
        FixedKeepAlive(float("nan"))


# ---- the node's use of the policy: per-function settings, the reaper's and pre-warm decisions

KEY_A, KEY_B = ("a", "r1"), ("b", "r1")


def test_policy_for_applies_a_functions_settings_over_the_nodes() -> None:
    node_fixed = FixedKeepAlive(300.0)
    assert policy_for(node_fixed) == FixedKeepAlive(300.0)
    assert policy_for(node_fixed, ttl_s=5.0) == FixedKeepAlive(5.0)
    chosen = policy_for(node_fixed, "histogram", bin_width_s=0.5, histogram=POLICY)
    assert isinstance(chosen, HistogramKeepAlive)
    assert (chosen.bin_width_s, chosen.fallback_ttl_s, chosen.range_s) == (0.5, 90.0, POLICY.range_s)
    node_hist = POLICY
    assert policy_for(node_hist) == node_hist
    assert policy_for(node_hist, "fixed") == FixedKeepAlive(POLICY.fallback_ttl_s)
    wide = policy_for(node_hist, ttl_s=7.0, bin_width_s=3600.0)
    assert isinstance(wide, HistogramKeepAlive)
    assert wide.range_s == 3600.0 and wide.bins == 1 and wide.out_of_bounds_ttl_s == 7.0
    with pytest.raises(ValueError):
        policy_for(node_fixed, "lru")


def test_history_for_starts_over_when_the_bins_change() -> None:
    hist = replay(POLICY, [30.0] * 12)
    assert history_for(POLICY, hist) is hist
    other = policy_for(POLICY, bin_width_s=2.0)
    assert isinstance(other, HistogramKeepAlive)
    fresh = history_for(other, hist)
    assert fresh.samples == 0 and fresh.idle_since_s == hist.idle_since_s and len(fresh.counts) == other.bins


def _view(iid: str, key: tuple[str, str], state: str = "IDLE", last_used_s: float = 0.0,
          provisioned: bool = False, stale: bool = False) -> InstanceView:
    return InstanceView(iid, key, state, last_used_s, stale=stale, provisioned=provisioned)


def test_expired_follows_each_functions_policy_and_holds_provisioned_instances() -> None:
    periodic = replay(POLICY, [30.0 + 0.1 * (k % 3) for k in range(40)])
    since = periodic.idle_since_s or 0.0
    snap = NodeSnapshot(since + 5.0, (
        _view("a-idle", KEY_A, last_used_s=since),                       # histogram: inside its pre-warm window
        _view("a-held", KEY_A, last_used_s=since, provisioned=True),     # provisioned: never
        _view("a-busy", KEY_A, "BUSY", last_used_s=since),
        _view("b-fresh", KEY_B, last_used_s=since + 1.0),                # fixed 10 s: not yet
        _view("b-old", KEY_B, last_used_s=since - 20.0),                 # fixed 10 s: expired
        _view("c-unknown", ("c", "r1"), last_used_s=0.0),                # not in the map: left alone
    ), max_instances=8)
    functions = {KEY_A: FunctionState(POLICY, periodic), KEY_B: FunctionState(FixedKeepAlive(10.0))}
    assert expired(snap, functions=functions) == ("b-old", "a-idle")
    assert expired(snap, 10.0) == ("c-unknown", "b-old")                 # one TTL for all, as before
    later = NodeSnapshot(since + 29.5, snap.instances, 8)                # the keep-alive window: kept
    assert "a-idle" not in expired(later, functions=functions)


def test_idle_expired_without_history_uses_the_fallback_from_the_instances_last_use() -> None:
    state = FunctionState(POLICY, None)
    assert not idle_expired(state, last_used_s=100.0, now_s=100.0 + POLICY.fallback_ttl_s)
    assert idle_expired(state, last_used_s=100.0, now_s=100.1 + POLICY.fallback_ttl_s)


def test_due_prewarms_once_per_idle_period_and_only_without_a_live_instance() -> None:
    periodic = replay(POLICY, [30.0 + 0.1 * (k % 3) for k in range(40)])
    since = periodic.idle_since_s or 0.0
    functions = {KEY_A: FunctionState(POLICY, periodic), KEY_B: FunctionState(FixedKeepAlive(10.0), None)}
    early = NodeSnapshot(since + 5.0, (), 8)
    assert due_prewarms(early, functions) == ()                          # still in the pre-warm window
    due = NodeSnapshot(since + 29.0, (), 8)
    assert due_prewarms(due, functions) == (KEY_A,)
    assert due_prewarms(due, functions, frozenset({(KEY_A, since)})) == ()   # already done this period
    running = NodeSnapshot(since + 29.0, (_view("a1", KEY_A, "STARTING"),), 8)
    assert due_prewarms(running, functions) == ()
    stale = NodeSnapshot(since + 29.0, (_view("a1", KEY_A, stale=True),), 8)
    assert due_prewarms(stale, functions) == (KEY_A,)
    gone = NodeSnapshot(since + 100.0, (), 8)                           # past the keep-alive window
    assert due_prewarms(gone, functions) == ()
    bursty = replay(POLICY, ([0.2] * 10 + [75.0]) * 8)                  # pre-warm window 0: never "due"
    assert due_prewarms(NodeSnapshot((bursty.idle_since_s or 0) + 1, (), 8),
                        {KEY_A: FunctionState(POLICY, bursty)}) == ()


def test_a_prewarm_leads_by_the_functions_init_time() -> None:
    periodic = replay(POLICY, [30.0 + 0.1 * (k % 3) for k in range(40)])
    since = periodic.idle_since_s or 0.0
    d = decide(POLICY, periodic, since)
    warm_from = since + d.prewarm_window_s
    plain, slow = FunctionState(POLICY, periodic), FunctionState(POLICY, periodic, lead_s=4.0)
    before = NodeSnapshot(warm_from - 3.0, (), 8)
    assert due_prewarms(before, {KEY_A: plain}) == ()
    assert due_prewarms(before, {KEY_A: slow}) == (KEY_A,)            # ready by the time the window ends
    assert idle_expired(plain, since, warm_from - 3.0)
    assert not idle_expired(slow, since, warm_from - 3.0)             # an early pre-warm is not reaped
    assert idle_expired(slow, since, warm_from - 5.0)                  # before its lead: unloaded
    # a pre-warm window shorter than the init: not worth unloading at all
    assert not idle_expired(FunctionState(POLICY, periodic, lead_s=d.prewarm_window_s + 1.0), since, since + 0.5)


def test_fallbacks_judge_each_instance_and_surplus_instances_go() -> None:
    few = replay(POLICY, [5.0] * 4)                     # too few samples: the fallback TTL, per instance
    since = few.idle_since_s or 0.0
    state = FunctionState(POLICY, few)
    assert not idle_expired(state, last_used_s=since, now_s=since + POLICY.fallback_ttl_s - 1)
    # an instance unused since long before the function's last call is not kept by that call
    assert idle_expired(state, last_used_s=since - 60.0, now_s=since + POLICY.fallback_ttl_s - 31)
    bursty = replay(POLICY, ([0.2] * 10 + [75.0]) * 8)  # histogram: kept from the call to the tail
    since = bursty.idle_since_s or 0.0
    d = decide(POLICY, bursty, since)
    hot = FunctionState(POLICY, bursty)
    assert not idle_expired(hot, last_used_s=since, now_s=since + 60.0)
    cycle = d.prewarm_window_s + d.keep_alive_window_s
    assert idle_expired(hot, last_used_s=since - cycle, now_s=since + 1.0)   # missed a whole cycle: surplus
