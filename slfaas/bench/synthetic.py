"""Synthetic arrivals: Poisson, or bursty Gamma inter-arrival times with a chosen coefficient
of variation (CV = 1 is Poisson; CV > 1 is burstier), seeded so every policy sees the same
arrivals. Prompt and output lengths are drawn from a real trace's rows."""
from __future__ import annotations

import math
from dataclasses import dataclass

from slfaas.bench.errors import TraceError
from slfaas.bench.trace import Trace, TraceRequest


@dataclass(frozen=True)
class ArrivalProcess:
    kind: str              # "poisson" | "gamma"
    rate_per_s: float
    cv: float = 1.0        # std / mean of the inter-arrival times

    @classmethod
    def parse(cls, spec: str) -> "ArrivalProcess":
        """``poisson:RATE`` or ``gamma:RATE:CV`` (RATE in requests per second)."""
        kind, *params = spec.strip().lower().split(":")
        usage = "expected poisson:RATE or gamma:RATE:CV (rate in requests/s)"
        if kind not in ("poisson", "gamma") or len(params) != (1 if kind == "poisson" else 2):
            raise TraceError(f"bad synthetic arrivals {spec!r}: {usage}")
        try:
            numbers = [float(p) for p in params]
        except ValueError:
            raise TraceError(f"bad synthetic arrivals {spec!r}: {usage}") from None
        if not all(math.isfinite(x) and x > 0 for x in numbers):
            raise TraceError(f"bad synthetic arrivals {spec!r}: rate and CV must be numbers > 0")
        return cls(kind, numbers[0], numbers[1] if kind == "gamma" else 1.0)

    @property
    def spec(self) -> str:
        return f"poisson:{self.rate_per_s:g}" if self.kind == "poisson" else f"gamma:{self.rate_per_s:g}:{self.cv:g}"

    def arrivals(self, duration_s: float, seed: int) -> list[float]:
        """Arrival instants in ``[0, duration_s)``."""
        import numpy as np

        rng = np.random.default_rng([seed, 1])
        mean_gap_s = 1.0 / self.rate_per_s
        out: list[float] = []
        t = 0.0
        chunk = max(16, int(duration_s * self.rate_per_s * 1.2))
        while True:
            if self.kind == "poisson":
                gaps = rng.exponential(mean_gap_s, chunk)
            else:  # shape k = 1/CV², scale = mean/k: mean 1/rate, CV as asked
                shape = 1.0 / (self.cv * self.cv)
                gaps = rng.gamma(shape, mean_gap_s / shape, chunk)
            for gap in gaps:
                t += float(gap)
                if t >= duration_s:
                    return out
                out.append(t)


def synthetic_trace(process: ArrivalProcess, duration_s: float, lengths: Trace, seed: int) -> Trace:
    """``duration_s`` of arrivals from ``process``, each with the (prompt, output) lengths of a
    row of ``lengths`` drawn uniformly with replacement."""
    import numpy as np

    if not math.isfinite(duration_s) or duration_s <= 0:
        raise TraceError(f"--duration must be a number of seconds > 0, got {duration_s}")
    if not lengths.requests:
        raise TraceError(f"{lengths.source} has no requests to draw lengths from")
    times = process.arrivals(duration_s, seed)
    if not times:
        raise TraceError(f"{process.spec} over {duration_s:g} s produced no requests; "
                         f"use a longer --duration or a higher rate")
    rows = np.random.default_rng([seed, 2]).integers(0, len(lengths.requests), len(times))
    picked = [lengths.requests[int(i)] for i in rows]
    return Trace(tuple(TraceRequest(t, r.prompt_tokens, r.output_tokens) for t, r in zip(times, picked)),
                 f"{process.spec} (lengths from {lengths.source})")
