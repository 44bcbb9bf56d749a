"""Pure allocation rules: how a batch's device time and a cold start's init become the
billed seconds of individual requests (IO-free; unit-tested)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from slfaas.billing.records import INIT_PHASES


def compute_share(device_share_s: float | None, wall_s: float, window_s: float, even_s: float) -> float:
    """The device seconds one invocation is billed. It ran for ``wall_s``, during which its
    instance's timeline activity (its batch) accrued ``window_s`` (less than ``wall_s`` when the
    instance overlapped other work on the device), of which ``even_s`` was its even share.
    ``device_share_s`` is the runtime's measure of its device time: its token share of every
    forward pass it was in (the whole passes when it ran alone). That is scaled by the
    instance's share of the device and capped at the window; without a measure (an error, a
    handler that bypassed the engine) the invocation is billed its even share of the window,
    as Lambda bills duration."""
    window_s, even_s = max(0.0, window_s), max(0.0, even_s)
    if device_share_s is None:
        return even_s
    ratio = 1.0 if wall_s <= 0 else min(1.0, window_s / wall_s)
    return min(max(0.0, device_share_s) * ratio, window_s)


def init_phases(init_wall_s: float, facts: Mapping[str, object]) -> dict[str, float]:
    """The cold-start phases from the node's wall time of the init and the runtime's own
    report (``imports_s``, ``backbone_attach_s``, ``adapter_load_s``, ``init_s``, optionally
    ``device_init_s``). Sandbox start is what the runtime's clock did not see (process or
    container start, interpreter start); handler init is the rest of the runtime's init."""
    def num(key: str) -> float:
        v = facts.get(key)
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 else 0.0

    runtime_s = min(num("init_s"), init_wall_s) if num("init_s") else 0.0
    phases = {"sandbox_start": max(0.0, init_wall_s - runtime_s), "imports": num("imports_s"),
              "device_init": num("device_init_s"), "backbone_attach": num("backbone_attach_s"),
              "adapter_load": num("adapter_load_s")}
    named = sum(v for k, v in phases.items() if k != "sandbox_start")
    phases["handler_init"] = max(0.0, runtime_s - named)
    return {k: round(phases[k], 6) for k in INIT_PHASES}
