"""The platform's own per-function settings: environment variables a function may set to tune
how slfaas serves it. Every other ``SLFAAS_*`` name stays reserved (the node's own wiring);
these are checked against their bounds when the function is created or updated, so a bad
value is refused at the API instead of surprising the node later."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

from slfaas.errors import InvalidParameter
from slfaas.runtime_contract import ENV_MAX_BATCH_SIZE, ENV_SHARED_EXECUTION, MAX_BATCH_SIZE_LIMIT

KEEP_ALIVE_POLICY = "SLFAAS_KEEP_ALIVE_POLICY"
KEEP_ALIVE_S = "SLFAAS_KEEP_ALIVE_S"
KEEP_ALIVE_BIN_S = "SLFAAS_KEEP_ALIVE_BIN_S"
TTFT_SLO_MS = "SLFAAS_TTFT_SLO_MS"
MAX_BATCH_SIZE = ENV_MAX_BATCH_SIZE   # the node tells the function's runtime under the same name
SHARED_EXECUTION = ENV_SHARED_EXECUTION   # 1: co-batched with other adapters of its backbone (opt-in)
KEEP_ALIVE_POLICIES = ("fixed", "histogram")


@dataclass(frozen=True)
class _Bounds:
    low: float
    high: float
    integer: bool
    unit: str


_NUMBERS = {
    KEEP_ALIVE_S: _Bounds(0, 86_400, False, "seconds an idle instance is kept (fixed), or the fallback TTL"),
    KEEP_ALIVE_BIN_S: _Bounds(0.1, 3_600, False, "seconds per idle-time histogram bin"),
    TTFT_SLO_MS: _Bounds(1, 600_000, True, "milliseconds to the first token the batcher aims for"),
    MAX_BATCH_SIZE: _Bounds(1, MAX_BATCH_SIZE_LIMIT, True, "invocations one instance runs at once, batched"),
    SHARED_EXECUTION: _Bounds(0, 1, True, "1: run in a platform runtime shared with other functions of the same "
                                          "base model, batched with them; needs the built-in handler"),
}
SETTING_NAMES = frozenset({KEEP_ALIVE_POLICY, *_NUMBERS})


@dataclass(frozen=True)
class FunctionSettings:
    """A function's settings; None: the server's default."""

    keep_alive_policy: str | None = None
    keep_alive_s: float | None = None
    keep_alive_bin_s: float | None = None
    ttft_slo_ms: int | None = None
    max_batch_size: int | None = None
    shared_execution: bool = False


def _number(name: str, raw: str) -> float:
    bounds = _NUMBERS[name]
    kind = "an integer" if bounds.integer else "a number"
    message = (f"Environment variable {name} must be {kind} from {bounds.low:g} to {bounds.high:g} "
               f"({bounds.unit}), got {raw!r}")
    try:
        value = int(raw) if bounds.integer else float(raw)
        in_range = math.isfinite(value) and bounds.low <= value <= bounds.high
    except (ValueError, OverflowError):   # not a number, or an integer too large for a float
        in_range = False
    if not in_range:
        raise InvalidParameter(message)
    return value


def parse_function_settings(variables: Mapping[str, str]) -> FunctionSettings:
    """The settings among a function's environment variables, each within its bounds."""
    policy = variables.get(KEEP_ALIVE_POLICY)
    if policy is not None and policy not in KEEP_ALIVE_POLICIES:
        raise InvalidParameter(f"Environment variable {KEEP_ALIVE_POLICY} must be one of "
                               f"{', '.join(KEEP_ALIVE_POLICIES)}, got {policy!r}")
    numbers = {name: _number(name, variables[name]) for name in _NUMBERS if name in variables}
    ttft = numbers.get(TTFT_SLO_MS)
    batch = numbers.get(MAX_BATCH_SIZE)
    return FunctionSettings(policy, numbers.get(KEEP_ALIVE_S), numbers.get(KEEP_ALIVE_BIN_S),
                            int(ttft) if ttft is not None else None, int(batch) if batch is not None else None,
                            numbers.get(SHARED_EXECUTION) == 1)
