"""The preloader's planner: which adapters sit in each device's GPU and pinned host tiers, and
how many pre-warmed runtimes to keep per (base model, device), from a frozen snapshot.

Greedy by value density under each budget, the way a fractional knapsack is filled: an
adapter's value is the cold-start seconds its tier saves times its arrival rate (seconds
saved per second), its cost its bytes. A pre-warmed runtime's value is the seconds it saves
times how often a k-th runtime is actually used before the pool refills (Poisson arrivals of
cold starts over the refill time), its cost its measured memory. Precedence: nothing for a
base model on a device that does not hold that backbone, and the configured minimum of
runtimes per resident backbone before any runtime chosen by value. Ties break by names, so
equal inputs give equal plans whatever their order.
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable, Literal

Tier = Literal["gpu", "host"]
MAX_RUNTIMES_PER_BACKBONE = 256   # bounds the candidates a budget could otherwise make endless


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _finite_nonneg(x: float) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x >= 0


@dataclass(frozen=True)
class FunctionDemand:
    function: str                 # the planner's key: a function (version) name
    base_model: str
    arrival_rate_per_s: float
    adapter_bytes: int
    gpu_saved_s: float            # cold-start seconds saved with the adapter in GPU memory (vs disk)
    host_saved_s: float           # ... in pinned host memory
    cold_start_rate_per_s: float | None = None   # runtimes it consumes; None: its arrival rate

    def __post_init__(self) -> None:
        _check(_finite_nonneg(self.arrival_rate_per_s), f"{self.function}: bad arrival rate")
        _check(isinstance(self.adapter_bytes, int) and self.adapter_bytes > 0, f"{self.function}: bad adapter bytes")
        _check(_finite_nonneg(self.gpu_saved_s) and _finite_nonneg(self.host_saved_s), f"{self.function}: bad savings")
        _check(self.cold_start_rate_per_s is None or _finite_nonneg(self.cold_start_rate_per_s),
               f"{self.function}: bad cold-start rate")

    @property
    def runtime_demand_per_s(self) -> float:
        return self.arrival_rate_per_s if self.cold_start_rate_per_s is None else self.cold_start_rate_per_s


@dataclass(frozen=True)
class ResidentBackbone:
    base_model: str
    runtime_bytes: int            # measured memory of one pre-warmed runtime (context + slots)
    runtime_saved_s: float        # cold-start seconds one saves (imports, context, attach, warm-up)

    def __post_init__(self) -> None:
        _check(isinstance(self.runtime_bytes, int) and self.runtime_bytes > 0, f"{self.base_model}: bad runtime bytes")
        _check(_finite_nonneg(self.runtime_saved_s), f"{self.base_model}: bad runtime savings")


@dataclass(frozen=True)
class DeviceState:
    device: str
    backbones: tuple[ResidentBackbone, ...]
    gpu_adapter_budget_bytes: int
    host_adapter_budget_bytes: int
    prewarm_budget_bytes: int

    def __post_init__(self) -> None:
        for budget in (self.gpu_adapter_budget_bytes, self.host_adapter_budget_bytes, self.prewarm_budget_bytes):
            _check(isinstance(budget, int) and budget >= 0, f"{self.device}: budgets are non-negative integers")
        names = [b.base_model for b in self.backbones]
        _check(len(names) == len(set(names)), f"{self.device}: a backbone listed twice")

    def holds(self, base_model: str) -> bool:
        return any(b.base_model == base_model for b in self.backbones)


@dataclass(frozen=True)
class PreloadSnapshot:
    functions: tuple[FunctionDemand, ...]
    devices: tuple[DeviceState, ...]
    min_prewarmed_per_backbone: int = 1
    refill_s: float = 5.0         # how long a used pre-warmed runtime takes to be replaced

    def __post_init__(self) -> None:
        _check(isinstance(self.min_prewarmed_per_backbone, int) and self.min_prewarmed_per_backbone >= 0,
               "min_prewarmed_per_backbone must be a non-negative integer")
        _check(_finite_nonneg(self.refill_s) and self.refill_s > 0, "refill_s must be positive")
        for kind, keys in (("function", [f.function for f in self.functions]),
                           ("device", [d.device for d in self.devices])):
            _check(len(keys) == len(set(keys)), f"a {kind} listed twice")


@dataclass(frozen=True)
class AdapterPlacement:
    function: str
    device: str
    tier: Tier


@dataclass(frozen=True)
class RuntimeTarget:
    base_model: str
    device: str
    count: int


@dataclass(frozen=True)
class DeviceUsage:
    device: str
    gpu_adapter_bytes: int
    host_adapter_bytes: int
    prewarm_bytes: int


@dataclass(frozen=True)
class PreloadPlan:
    adapters: tuple[AdapterPlacement, ...]     # sorted by (device, tier, function)
    runtimes: tuple[RuntimeTarget, ...]        # one per resident (base model, device), sorted
    usage: tuple[DeviceUsage, ...]
    notes: tuple[str, ...] = ()                # minimums a budget could not hold

    def placement(self, function: str) -> AdapterPlacement | None:
        return next((p for p in self.adapters if p.function == function), None)

    def runtimes_for(self, base_model: str, device: str) -> int:
        return next((r.count for r in self.runtimes if (r.base_model, r.device) == (base_model, device)), 0)


def poisson_tail(mean: float, k: int) -> float:
    """P(N ≥ k) for N ~ Poisson(mean), stable for large means (terms in log space)."""
    if k <= 0:
        return 1.0
    if mean <= 0:
        return 0.0
    below = sum(math.exp(-mean + i * math.log(mean) - math.lgamma(i + 1)) for i in range(k))
    return max(0.0, 1.0 - below)


@dataclass(frozen=True)
class _Item:
    density: float
    value: float
    key: tuple[str, ...]          # names: the deterministic tie-break
    bytes: int

    def order(self) -> tuple:
        return (-self.density, -self.value, self.key)


def _adapter_items(snapshot: PreloadSnapshot) -> list[tuple[_Item, FunctionDemand, DeviceState, Tier]]:
    items = []
    for f in snapshot.functions:
        for d in snapshot.devices:
            if not d.holds(f.base_model):
                continue   # precedence: an adapter only where its backbone is
            for tier, saved in (("gpu", f.gpu_saved_s), ("host", f.host_saved_s)):
                value = saved * f.arrival_rate_per_s
                if value > 0:
                    items.append((_Item(value / f.adapter_bytes, value, (f.function, tier, d.device), f.adapter_bytes),
                                  f, d, tier))
    return sorted(items, key=lambda it: it[0].order())


def _runtime_demand(snapshot: PreloadSnapshot) -> dict[tuple[str, str], float]:
    """Cold starts per second each (base model, device) serves: a base model's demand split
    evenly over the devices that hold it."""
    holders: dict[str, list[str]] = defaultdict(list)
    for d in snapshot.devices:
        for b in d.backbones:
            holders[b.base_model].append(d.device)
    demand: dict[tuple[str, str], float] = defaultdict(float)
    for f in snapshot.functions:
        for device in holders.get(f.base_model, ()):
            demand[(f.base_model, device)] += f.runtime_demand_per_s / len(holders[f.base_model])
    return demand


def plan(snapshot: PreloadSnapshot) -> PreloadPlan:
    devices = sorted(snapshot.devices, key=lambda d: d.device)
    left = {d.device: {"gpu": d.gpu_adapter_budget_bytes, "host": d.host_adapter_budget_bytes,
                       "prewarm": d.prewarm_budget_bytes} for d in devices}
    placed: dict[str, AdapterPlacement] = {}
    for item, f, d, tier in _adapter_items(snapshot):
        if f.function in placed or left[d.device][tier] < item.bytes:
            continue
        left[d.device][tier] -= item.bytes
        placed[f.function] = AdapterPlacement(f.function, d.device, tier)

    counts: dict[tuple[str, str], int] = {}
    notes = []
    for d in devices:   # the minimum first: a never-invoked function has no rate yet
        for b in sorted(d.backbones, key=lambda b: b.base_model):
            n = min(snapshot.min_prewarmed_per_backbone, left[d.device]["prewarm"] // b.runtime_bytes)
            counts[(b.base_model, d.device)] = n
            left[d.device]["prewarm"] -= n * b.runtime_bytes
            if n < snapshot.min_prewarmed_per_backbone:
                notes.append(f"{d.device}: budget holds {n} of the minimum {snapshot.min_prewarmed_per_backbone} "
                             f"pre-warmed runtimes of {b.base_model}")
    demand = _runtime_demand(snapshot)
    extra = []
    for d in devices:
        for b in d.backbones:
            mean = demand.get((b.base_model, d.device), 0.0) * snapshot.refill_s
            most = min(MAX_RUNTIMES_PER_BACKBONE, d.prewarm_budget_bytes // b.runtime_bytes)
            for k in range(counts[(b.base_model, d.device)] + 1, most + 1):
                value = b.runtime_saved_s * poisson_tail(mean, k) / snapshot.refill_s
                if value <= 0:
                    break
                extra.append((_Item(value / b.runtime_bytes, value, (b.base_model, d.device, f"{k:06d}"),
                                    b.runtime_bytes), b, d, k))
    for item, b, d, k in sorted(extra, key=lambda it: it[0].order()):
        key = (b.base_model, d.device)
        if counts[key] == k - 1 and left[d.device]["prewarm"] >= item.bytes:   # the k-th only after the (k-1)-th
            counts[key] = k
            left[d.device]["prewarm"] -= item.bytes

    return PreloadPlan(
        adapters=tuple(sorted(placed.values(), key=lambda p: (p.device, p.tier, p.function))),
        runtimes=tuple(RuntimeTarget(base, dev, n)
                       for (base, dev), n in sorted(counts.items(), key=lambda kv: (kv[0][1], kv[0][0]))),
        usage=tuple(DeviceUsage(d.device, d.gpu_adapter_budget_bytes - left[d.device]["gpu"],
                                d.host_adapter_budget_bytes - left[d.device]["host"],
                                d.prewarm_budget_bytes - left[d.device]["prewarm"]) for d in devices),
        notes=tuple(notes))


def estimate_rate_per_s(arrivals_s: Iterable[float], now_s: float, time_constant_s: float = 60.0) -> float:
    """Arrivals per second, exponentially weighted: Σ exp(-(now - t)/τ) / τ over arrivals up
    to ``now_s``. Unbiased for a steady Poisson stream observed for a few τ; recent bursts
    count fully and fade within a few τ. Arrivals after ``now_s`` (another clock) are ignored."""
    _check(time_constant_s > 0 and math.isfinite(time_constant_s), "time_constant_s must be positive")
    horizon = 40 * time_constant_s   # beyond it a weight is below 1e-17
    total = 0.0
    for t in arrivals_s:
        age = now_s - t
        if 0 <= age < horizon:
            total += math.exp(-age / time_constant_s)
    return total / time_constant_s

