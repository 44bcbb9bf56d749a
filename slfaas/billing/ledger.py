"""Pure allocation rules: how a batch's device time and a cold start's init become the
billed seconds of individual requests (IO-free; unit-tested)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from slfaas.billing.records import INIT_PHASES


@dataclass(frozen=True)
class BatchShare:
    compute_device_s: float     # billed to each request
    runtime_overhead_s: float   # each request's part of the batch's wall share that was not device work


def split_batch(accrued_s: float, wall_s: float, batch_device_s: float, batch_size: int) -> BatchShare:
    """A batch ran for ``wall_s`` of wall time, of which the timeline gave it ``accrued_s``
    (less when it overlapped other work) and the device measured ``batch_device_s``. Its
    device seconds are scaled by the same share, then split evenly: each of the k requests
    is billed 1/k. What is left of the accrued share (host-side work) is platform overhead."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
    accrued_s = max(0.0, accrued_s)
    ratio = 1.0 if wall_s <= 0 else min(1.0, accrued_s / wall_s)
    device_s = min(max(0.0, batch_device_s) * ratio, accrued_s)
    return BatchShare(device_s / batch_size, (accrued_s - device_s) / batch_size)


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
