"""The batch latency model the SLO scheduler plans with: T(b) = T0 + α·(b − 1), the time to a
batch's first tokens at batch size b, fitted online per (function, device, prompt-length
bucket) from measured batches; and the cold-start time of a function's new instance.

The fit is least squares over exponentially weighted sums (recent batches count most, so the
model follows a device whose load or clocks change). Where a bucket has too little data, the
function's fit over every bucket stands in, then the device's over every function, then the
priors. With measurements at a single batch size the slope cannot be fitted: α is then the
prior's share of T0. Measurements are normalised by the contention they ran under (the other
batches running on the device when they were dispatched: ``1 + κ·others``), so T(b) is a
batch's time alone and the scheduler multiplies the contention of the moment back in.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from slfaas.gpu_node.policy.view import PoolKey

BUCKET_EDGES_TOKENS = (128, 512, 2048)   # prompt-length buckets: < 128, < 512, < 2048, longer


def bucket(prompt_tokens: int) -> int:
    for i, edge in enumerate(BUCKET_EDGES_TOKENS):
        if prompt_tokens < edge:
            return i
    return len(BUCKET_EDGES_TOKENS)


@dataclass(frozen=True)
class Fit:
    t0_ms: float
    alpha_ms: float
    weight: float                 # effective number of measurements behind it

    def at(self, batch_size: int) -> float:
        return self.t0_ms + self.alpha_ms * (max(1, batch_size) - 1)


@dataclass(frozen=True)
class LatencyPrior:
    t0_ms: float = 100.0          # before any measurement
    alpha_share: float = 0.25     # α as a share of T0 while the slope cannot be fitted
    cold_start_ms: float = 3000.0
    decay: float = 0.97           # weight kept by older measurements at each new one
    min_weight: float = 1.5       # a level of the model answers only with this much data (two measurements)

    def __post_init__(self) -> None:
        if not (self.t0_ms > 0 and self.alpha_share >= 0 and self.cold_start_ms >= 0 and 0 < self.decay <= 1
                and self.min_weight > 0 and all(map(math.isfinite, (self.t0_ms, self.alpha_share,
                                                                    self.cold_start_ms)))):
            raise ValueError(f"bad latency prior {self}")


class _Sums:
    """Exponentially weighted sums of x = b − 1 and y = time, for a weighted least-squares line."""

    def __init__(self) -> None:
        self.w = self.x = self.y = self.xx = self.xy = 0.0

    def add(self, x: float, y: float, decay: float) -> None:
        self.w = self.w * decay + 1.0
        self.x = self.x * decay + x
        self.y = self.y * decay + y
        self.xx = self.xx * decay + x * x
        self.xy = self.xy * decay + x * y

    def fit(self, alpha_share: float) -> Fit:
        mx, my = self.x / self.w, self.y / self.w
        var = self.xx / self.w - mx * mx
        if var > 1e-6:
            alpha = (self.xy / self.w - mx * my) / var
        else:   # one batch size seen: y = T0·(1 + share·x) at the mean
            alpha = alpha_share * my / (1.0 + alpha_share * mx)
        alpha = max(0.0, alpha)
        t0 = my - alpha * mx
        if t0 <= 0:     # a slope steeper than the data allows: a flat line through the mean
            t0, alpha = max(my, 1e-3), 0.0
        return Fit(t0, alpha, self.w)


class _Mean:
    def __init__(self) -> None:
        self.w = self.total = 0.0

    def add(self, value: float, decay: float) -> None:
        self.w = self.w * decay + 1.0
        self.total = self.total * decay + value


class LatencyModel:
    """Pure and deterministic: ``observe`` folds a measurement in, ``estimate_ms`` answers."""

    def __init__(self, device: str = "cpu", prior: LatencyPrior | None = None):
        self.device = device
        self.prior = prior or LatencyPrior()
        self._exact: dict[tuple[PoolKey, int], _Sums] = {}
        self._function: dict[PoolKey, _Sums] = {}
        self._device = _Sums()
        self._cold: dict[PoolKey, _Mean] = {}
        self._cold_device = _Mean()

    def observe(self, key: PoolKey, prompt_tokens: int, batch_size: int, ttft_ms: float,
                contention: float = 1.0) -> None:
        """One request's measured time to its first token in a batch of ``batch_size``, under
        ``contention`` (≥ 1: the slowdown factor of the batches it shared the device with)."""
        if not (math.isfinite(ttft_ms) and ttft_ms >= 0 and batch_size >= 1 and contention >= 1):
            return
        x, y, d = float(batch_size - 1), ttft_ms / contention, self.prior.decay
        for sums in (self._exact.setdefault((key, bucket(prompt_tokens)), _Sums()),
                     self._function.setdefault(key, _Sums()), self._device):
            sums.add(x, y, d)

    def observe_cold_start(self, key: PoolKey, init_ms: float) -> None:
        if math.isfinite(init_ms) and init_ms >= 0:
            self._cold.setdefault(key, _Mean()).add(init_ms, self.prior.decay)
            self._cold_device.add(init_ms, self.prior.decay)

    def fit(self, key: PoolKey, prompt_tokens: int) -> Fit:
        for sums in (self._exact.get((key, bucket(prompt_tokens))), self._function.get(key), self._device):
            if sums is not None and sums.w >= self.prior.min_weight:
                return sums.fit(self.prior.alpha_share)
        p = self.prior
        return Fit(p.t0_ms, p.alpha_share * p.t0_ms, 0.0)

    def estimate_ms(self, key: PoolKey, prompt_tokens: int, batch_size: int) -> float:
        return self.fit(key, prompt_tokens).at(batch_size)

    def cold_start_ms(self, key: PoolKey) -> float:
        for mean in (self._cold.get(key), self._cold_device):
            if mean is not None and mean.w >= 1.0:
                return mean.total / mean.w
        return self.prior.cold_start_ms
