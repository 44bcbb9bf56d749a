"""Keep-alive policies: how long an idle function stays loaded, and when to load it back.

``FixedKeepAlive`` is the classic TTL. ``HistogramKeepAlive`` is the hybrid histogram policy
of "Serverless in the Wild" (Shahrad et al., USENIX ATC'20): per function, a histogram of idle
times (end of one invocation to the start of the next). When it is representative, unload
right after an invocation and load again after a pre-warm window (the histogram's head
percentile, less a margin), then stay loaded for a keep-alive window reaching its tail
percentile (plus a margin). When it is not, fall back: too few samples, or a flat histogram
(low coefficient of variation of the bin counts, as in the paper), keeps the fixed TTL; most
idle times beyond the histogram's range (the paper forecasts those with ARIMA) keep a
configurable TTL too. Bins are seconds wide by default: LLM functions idle for seconds.

Pure: state is a frozen value (``IdleHistogram``, updated by returning a new one), the clock a
number passed in, the decision a frozen value.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal, Mapping, Union

from slfaas.gpu_node.policy.view import NodeSnapshot, PoolKey

Reason = Literal["fixed", "histogram", "no_history", "few_samples", "low_confidence", "out_of_bounds"]


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


@dataclass(frozen=True)
class FixedKeepAlive:
    ttl_s: float = 600.0

    def __post_init__(self) -> None:
        _check(math.isfinite(self.ttl_s) and self.ttl_s >= 0, "ttl_s must be a non-negative number")


@dataclass(frozen=True)
class HistogramKeepAlive:
    bin_width_s: float = 1.0
    range_s: float = 600.0              # idle times beyond it are out of bounds
    head_percentile: float = 5.0
    tail_percentile: float = 99.0
    margin: float = 0.10                # head lowered, tail raised by this fraction
    cv_threshold: float = 2.0           # bin-count CV below it: the histogram is too flat to trust
    oob_threshold: float = 0.5          # share of out-of-bounds idle times that abandons the histogram
    min_samples: int = 10
    fallback_ttl_s: float = 600.0       # no/low-confidence history: behave like FixedKeepAlive(this)
    out_of_bounds_ttl_s: float = 600.0

    def __post_init__(self) -> None:
        _check(self.bin_width_s > 0 and math.isfinite(self.bin_width_s), "bin_width_s must be positive")
        _check(self.range_s >= self.bin_width_s and math.isfinite(self.range_s), "range_s must hold a bin")
        _check(self.range_s / self.bin_width_s <= 100_000, "too many bins (range_s / bin_width_s > 100000)")
        _check(0 <= self.head_percentile < self.tail_percentile <= 100, "need 0 <= head < tail <= 100")
        _check(0 <= self.margin < 1, "margin must be in [0, 1)")
        _check(self.cv_threshold >= 0 and 0 < self.oob_threshold <= 1, "bad thresholds")
        _check(self.min_samples >= 1, "min_samples must be at least 1")
        for ttl in (self.fallback_ttl_s, self.out_of_bounds_ttl_s):
            _check(math.isfinite(ttl) and ttl >= 0, "TTLs must be non-negative numbers")

    @property
    def bins(self) -> int:
        return math.ceil(self.range_s / self.bin_width_s - 1e-9)


KeepAlivePolicy = Union[FixedKeepAlive, HistogramKeepAlive]


@dataclass(frozen=True)
class IdleHistogram:
    """One function's idle-time history; ``idle_since_s``: when its current idle period began
    (the end of its last invocation), None before the first."""

    bin_width_s: float
    counts: tuple[int, ...]
    out_of_bounds: int = 0
    idle_since_s: float | None = None

    @classmethod
    def empty(cls, policy: HistogramKeepAlive) -> "IdleHistogram":
        return cls(policy.bin_width_s, (0,) * policy.bins)

    @property
    def in_bounds(self) -> int:
        return sum(self.counts)

    @property
    def samples(self) -> int:
        return self.in_bounds + self.out_of_bounds

    def record_idle(self, idle_s: float) -> "IdleHistogram":
        _check(math.isfinite(idle_s), "idle time must be finite")
        i = int(max(0.0, idle_s) // self.bin_width_s)
        if i >= len(self.counts):
            return replace(self, out_of_bounds=self.out_of_bounds + 1)
        return replace(self, counts=self.counts[:i] + (self.counts[i] + 1,) + self.counts[i + 1:])

    def invoked(self, start_s: float, end_s: float) -> "IdleHistogram":
        """An invocation ran from ``start_s`` to ``end_s``: the idle time before it is recorded
        (overlapping invocations count as no idle time) and a new idle period begins."""
        h = self if self.idle_since_s is None else self.record_idle(max(0.0, start_s - self.idle_since_s))
        return replace(h, idle_since_s=end_s if h.idle_since_s is None else max(end_s, h.idle_since_s))

    def percentile_bin(self, percentile: float) -> int:
        """The first bin by which ``percentile`` % of the in-bound idle times have been seen."""
        total, seen = self.in_bounds, 0
        for i, c in enumerate(self.counts):
            seen += c
            if seen * 100 >= percentile * total:
                return i
        return len(self.counts) - 1

    def bin_cv(self) -> float:
        n, total = len(self.counts), self.in_bounds
        if n < 2 or total == 0:
            return 0.0
        mean = total / n
        return math.sqrt(sum((c - mean) ** 2 for c in self.counts) / (n - 1)) / mean


@dataclass(frozen=True)
class KeepAliveDecision:
    prewarm_window_s: float        # after going idle, stay unloaded this long (0: stay loaded)
    keep_alive_window_s: float     # then stay loaded this long
    reason: Reason
    warm_from_s: float | None = None    # absolute times (the caller's clock); None without history
    warm_until_s: float | None = None
    keep_warm: bool = False        # should an instance of the function be loaded at the clock's now

    @property
    def prewarm_due(self) -> bool:
        """An unloaded function should be loaded now (the pre-warm window has passed)."""
        return self.keep_warm and self.prewarm_window_s > 0


def _windows(policy: HistogramKeepAlive, hist: IdleHistogram) -> tuple[float, float, Reason]:
    if hist.samples < policy.min_samples:
        return 0.0, policy.fallback_ttl_s, "few_samples"
    if hist.out_of_bounds / hist.samples >= policy.oob_threshold:
        return 0.0, policy.out_of_bounds_ttl_s, "out_of_bounds"
    if hist.bin_cv() < policy.cv_threshold:
        return 0.0, policy.fallback_ttl_s, "low_confidence"
    head = hist.percentile_bin(policy.head_percentile) * hist.bin_width_s * (1 - policy.margin)
    tail = (hist.percentile_bin(policy.tail_percentile) + 1) * hist.bin_width_s * (1 + policy.margin)
    return head, tail - head, "histogram"


def decide(policy: KeepAlivePolicy, hist: IdleHistogram | None, now_s: float) -> KeepAliveDecision:
    """The windows for a function, and whether it should be loaded at ``now_s``."""
    reason: Reason
    if isinstance(policy, FixedKeepAlive):
        prewarm, keep, reason = 0.0, policy.ttl_s, "fixed"
    elif hist is None:
        prewarm, keep, reason = 0.0, policy.fallback_ttl_s, "no_history"
    else:
        _check(hist.bin_width_s == policy.bin_width_s and len(hist.counts) == policy.bins,
               "the histogram was made for another policy")
        prewarm, keep, reason = _windows(policy, hist)
    since = hist.idle_since_s if hist is not None else None
    if since is None:
        return KeepAliveDecision(prewarm, keep, reason)
    warm_from = since + prewarm
    warm_until = warm_from + keep
    return KeepAliveDecision(prewarm, keep, reason, warm_from, warm_until, warm_from <= now_s < warm_until)


def policy_for(default: KeepAlivePolicy, policy: str | None = None, ttl_s: float | None = None,
               bin_width_s: float | None = None, histogram: HistogramKeepAlive | None = None) -> KeepAlivePolicy:
    """A function's policy: its own settings (None: not set) over the node's ``default``. The
    TTL is the fixed policy's, or the histogram policy's fallback and out-of-bounds TTL.
    ``histogram``: the node's histogram settings, for a function that chooses that policy on a
    node whose default is a fixed TTL."""
    kind = policy or ("fixed" if isinstance(default, FixedKeepAlive) else "histogram")
    if kind == "fixed":
        default_ttl = default.ttl_s if isinstance(default, FixedKeepAlive) else default.fallback_ttl_s
        return FixedKeepAlive(default_ttl if ttl_s is None else ttl_s)
    _check(kind == "histogram", f"unknown keep-alive policy {kind!r} (fixed or histogram)")
    base = default if isinstance(default, HistogramKeepAlive) else (histogram or HistogramKeepAlive())
    width = base.bin_width_s if bin_width_s is None else bin_width_s
    range_s = min(max(base.range_s, width), width * 100_000)
    out = replace(base, bin_width_s=width, range_s=range_s)
    return out if ttl_s is None else replace(out, fallback_ttl_s=ttl_s, out_of_bounds_ttl_s=ttl_s)


def history_for(policy: HistogramKeepAlive, hist: IdleHistogram | None) -> IdleHistogram:
    """``hist`` if it was made with ``policy``'s bins, else a fresh one that keeps the current
    idle period (a function whose bin width changed starts its histogram over)."""
    if hist is not None and hist.bin_width_s == policy.bin_width_s and len(hist.counts) == policy.bins:
        return hist
    return replace(IdleHistogram.empty(policy), idle_since_s=hist.idle_since_s if hist is not None else None)


@dataclass(frozen=True)
class FunctionState:
    """What keep-alive decides with for one pool key: the function's policy, its idle history
    (None before its first invocation ended on this node), and ``lead_s``: how long before the
    pre-warm window ends a pre-warm starts (the function's init time: its instance should be
    ready when the window ends, not begin its init then; seconds matter at second-wide bins)."""

    policy: KeepAlivePolicy
    history: IdleHistogram | None = None
    lead_s: float = 0.0


def idle_expired(state: FunctionState, last_used_s: float, now_s: float) -> bool:
    """Should an idle instance stop now? Fixed: its own idle time passed the TTL. Histogram,
    when representative: its function's decision says unloaded at ``now_s`` (inside the
    pre-warm window, or after the keep-alive window), or the instance went unused for a whole
    predicted cycle (a surplus one, left by a burst). Otherwise (no or too little history) the
    fallback TTL, from the instance's own last use like the fixed policy."""
    if isinstance(state.policy, FixedKeepAlive):
        return now_s - last_used_s > state.policy.ttl_s
    d = decide(state.policy, history_for(state.policy, state.history) if state.history is not None else None, now_s)
    if d.reason != "histogram" or d.warm_from_s is None:
        return now_s - last_used_s > d.keep_alive_window_s
    if now_s - last_used_s > d.prewarm_window_s + d.keep_alive_window_s:
        return True
    leading = d.warm_from_s - state.lead_s <= now_s < d.warm_from_s   # pre-warmed early, or not worth unloading
    return not (d.keep_warm or leading)


def expired(snapshot: NodeSnapshot, keep_alive_s: float | None = None, *,
            functions: Mapping[PoolKey, FunctionState] | None = None) -> tuple[str, ...]:
    """Idle instances whose keep-alive says stop, oldest first: under one fixed TTL
    (``keep_alive_s``) for every instance, or each pool key's state (``functions``: keys not in
    it are left alone). Provisioned instances are held whatever their idle time."""
    if functions is None:
        _check(keep_alive_s is not None, "give keep_alive_s or functions")
        ttl = FunctionState(FixedKeepAlive(float(keep_alive_s or 0.0)))
        functions = {i.pool_key: ttl for i in snapshot.instances}
    out = [i for i in snapshot.instances if i.state == "IDLE" and not i.provisioned and i.pool_key in functions
           and idle_expired(functions[i.pool_key], i.last_used_s, snapshot.now_s)]
    return tuple(i.instance_id for i in sorted(out, key=lambda i: (i.last_used_s, i.instance_id)))


def due_prewarms(snapshot: NodeSnapshot, functions: Mapping[PoolKey, FunctionState],
                 done: frozenset[tuple[PoolKey, float]] = frozenset()) -> tuple[PoolKey, ...]:
    """Pool keys to load now, ahead of their next invocation: the histogram says the pre-warm
    window ends within the key's ``lead_s`` (or is over, and the keep-alive window not yet), no
    live instance of the key exists, and it was not pre-warmed already in this idle period
    (``done``: (key, idle_since_s))."""
    live = {i.pool_key for i in snapshot.instances if i.alive and not i.stale}
    out = []
    for key, state in sorted(functions.items()):
        if not isinstance(state.policy, HistogramKeepAlive) or state.history is None or key in live:
            continue
        hist = history_for(state.policy, state.history)
        d = decide(state.policy, hist, snapshot.now_s + state.lead_s)
        if d.prewarm_due and hist.idle_since_s is not None and (key, hist.idle_since_s) not in done:
            out.append(key)
    return tuple(out)
