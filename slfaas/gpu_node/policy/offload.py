"""What to free when something new would not fit in GPU memory: the lowest-value resident
artifacts, by the preloader's measure of value.

An artifact's value is what keeping it saves per second: its arrival rate times the seconds
re-creating it would cost (an instance's cold start, an adapter's load), per MB it holds
(value density, as the preloader fills its tiers). The choice is greedy from the lowest
density up (stale instances first: nothing will use them again; then least recently used
among equals) until the memory needed is covered, then drops what the larger later picks
made unnecessary, most valuable first. Never chosen: anything in use (a busy instance, an
idle one a queued request is about to use, an adapter a running instance holds) and any
backbone (a backbone is only unloaded when no instance borrows it, which is not this choice).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Literal

Kind = Literal["instance", "adapter", "backbone"]


@dataclass(frozen=True)
class Resident:
    artifact_id: str
    kind: Kind
    gpu_mb: float
    rate_per_s: float = 0.0          # arrivals of the function it serves
    reload_s: float = 0.0            # what freeing it costs the next request (cold start, load)
    last_used_s: float = 0.0
    in_use: bool = False
    stale: bool = False              # of a retired revision: worth nothing

    def __post_init__(self) -> None:
        for name in ("gpu_mb", "rate_per_s", "reload_s"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{self.artifact_id}: {name} must be a finite non-negative number, got {value!r}")

    @property
    def value_per_s(self) -> float:
        return 0.0 if self.stale else self.rate_per_s * self.reload_s

    @property
    def density(self) -> float:
        """Seconds saved per second per MB held (an artifact of no size is worth keeping)."""
        return self.value_per_s / self.gpu_mb if self.gpu_mb > 0 else math.inf


def _order(r: Resident) -> tuple:
    return (not r.stale, r.density, r.value_per_s, r.last_used_s, r.artifact_id)


def choose_offload(residents: Iterable[Resident], need_mb: float) -> tuple[str, ...] | None:
    """The artifacts to free (in the order to free them) so that ``need_mb`` more fits; ()
    when nothing is needed; None when freeing everything that may be freed is not enough."""
    if need_mb <= 0:
        return ()
    free = sorted((r for r in residents if not r.in_use and r.kind != "backbone" and r.gpu_mb > 0), key=_order)
    chosen: list[Resident] = []
    freed = 0.0
    for r in free:
        if freed >= need_mb:
            break
        chosen.append(r)
        freed += r.gpu_mb
    if freed < need_mb:
        return None
    for r in sorted(chosen, key=_order, reverse=True):   # keep the valuable ones a later pick made needless
        if freed - r.gpu_mb >= need_mb:
            chosen.remove(r)
            freed -= r.gpu_mb
    return tuple(r.artifact_id for r in chosen)
