"""One definition of cost for comparing serving policies that were each run for real
(``slfaas bench compare``; docs/BILLING.md, "Comparing policies"). IO-free: every figure comes
from the run's own billing records.

(a) What the user pays, as each kind of platform bills:

* ``per-request`` (slfaas): the run's usage records as billed: each invocation's share of the
  device time of the forward passes it ran in (processor-shared, batch shares) plus the cold
  start it caused, and the request fee.
* ``container`` (serverless baselines without sharing): every container pays for each second
  it is alive in the window, cold start and keep-alive included, in proportion to the device
  memory it holds: ``alive_s × device_mb / device_total_mb`` GPU-seconds at the GPU's price (a
  13.5 GB container on a 141 GB H200 pays 9.6 % of it per second); plus the request fee. On a
  CPU node a container holds its MemorySize, which the CPU price already scales with (Fargate).
* ``whole-device`` (serverful): the whole device for the whole window, no request fees.

(b) What the provider spends: the node's device-seconds in the window (the node holds its device
from start to stop, whatever runs on it), at the device's price.

Windows are [since, until]. A container's bill runs over [since, ``lives_until``]: its whole
life, keep-alive after its last request included, where the harness waited for the node to end
its containers (``lives_until`` = when it stopped waiting; an instance still alive then pays up
to that time), or up to ``until`` only (a lower bound) where it did not wait.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal
from typing import Sequence

from slfaas.billing.prices import CPU, PriceSheet, invocation_cost_usd
from slfaas.billing.records import InstanceUsage, NodeUsage, UsageRecord

BILLING_MODELS = ("per-request", "container", "whole-device")


@dataclass(frozen=True)
class PolicyCost:
    billing: str                 # one of BILLING_MODELS
    user_usd: Decimal            # (a) what the user pays
    user_device_s: float         # the device-seconds (GPU-second equivalents) that pays for
    provider_device_s: float     # (b) the node's device-seconds in the window
    provider_usd: Decimal
    requests: int                # invocations whose fee is included
    containers: int              # instances alive in the window
    window_s: float
    explanation: str             # one line: what was counted
    after_window_device_s: float = 0.0   # of user_device_s: containers' keep-alive after the window


def _overlap_s(start: float, end: float, since: float, until: float) -> float:
    return max(0.0, min(end, until) - max(start, since))


def provider_device_s(nodes: Sequence[NodeUsage], since_ts: float, until_ts: float) -> float:
    """The node sessions' device-seconds inside the window (each node holds one device)."""
    return math.fsum(_overlap_s(n.start_ts, n.end_ts, since_ts, until_ts) for n in nodes)


def container_share(life: InstanceUsage, device_total_mb: float | None, fallback_mb: float | None) -> float:
    """The fraction of the device a container pays for: its device memory over the device's
    (at most 1); on CPU (no device memory) 1, its MemorySize being in the price already."""
    if life.device_type == CPU or device_total_mb is None:
        return 1.0
    held = life.device_mb if life.device_mb is not None else fallback_mb
    if held is None:
        raise ValueError(f"the device memory of instance {life.instance_id} is not known, nor that of any other")
    if device_total_mb <= 0:
        raise ValueError(f"the device's memory must be > 0 MB, got {device_total_mb}")
    return min(1.0, max(0.0, held) / device_total_mb)


def policy_cost(billing: str, sheet: PriceSheet, *, device_type: str, memory_mb: int, since_ts: float,
                until_ts: float, usage: Sequence[UsageRecord] = (), instances: Sequence[InstanceUsage] = (),
                nodes: Sequence[NodeUsage] = (), device_total_mb: float | None = None,
                lives_until_ts: float | None = None) -> PolicyCost:
    """The user's and the provider's cost of one run. ``usage``: the run's invocations' records;
    ``instances``: instances alive at some time in the window; ``nodes``: the node's sessions;
    ``memory_mb``: the functions' MemorySize (it prices a CPU device-second); ``lives_until_ts``:
    containers are billed up to this time (at least ``until_ts``, its default)."""
    if billing not in BILLING_MODELS:
        raise ValueError(f"billing must be one of {', '.join(BILLING_MODELS)}, got {billing!r}")
    window_s = until_ts - since_ts
    if not math.isfinite(window_s) or window_s < 0:
        raise ValueError(f"window end {until_ts} is before its start {since_ts}")
    lives_until = until_ts if lives_until_ts is None else lives_until_ts
    if not (math.isfinite(lives_until) and lives_until >= until_ts):   # also NaN
        raise ValueError(f"containers are billed up to a finite time no earlier than the window's end {until_ts}, "
                         f"got {lives_until_ts}")
    node_s = provider_device_s(nodes, since_ts, until_ts)
    provider_usd = invocation_cost_usd(sheet, device_type, memory_mb, node_s, requests=0)
    lives = [i for i in instances if i.alive_s(since_ts, until_ts) > 0]
    requests = len(usage)
    after_s = 0.0
    if billing == "per-request":
        user_usd = sum((r.cost_usd for r in usage), Decimal(0))
        user_s = math.fsum(r.billed_device_s for r in usage)
        text = f"{requests} invocations as billed (device-time shares, cold starts they caused, request fees)"
    elif billing == "container":
        known = [i.device_mb for i in lives if i.device_mb is not None]
        fallback = max(known) if known else None
        user_usd, user_s = sheet.request_usd * requests, 0.0
        alive = 0.0
        for life in lives:
            share = container_share(life, device_total_mb, fallback)
            whole_s = life.alive_s(since_ts, lives_until)
            alive += whole_s
            after_s += (whole_s - life.alive_s(since_ts, until_ts)) * share
            user_s += whole_s * share
            user_usd += invocation_cost_usd(sheet, device_type, life.memory_mb or memory_mb, whole_s * share,
                                            requests=0)
        tail = (f", keep-alive after the window included ({after_s:.1f} device-s)" if lives_until > until_ts
                else ", up to the window's end only")
        text = (f"{len(lives)} containers billed while alive ({alive:.1f} s) by device memory share{tail}, "
                f"+ {requests} request fees")
    else:
        user_s = window_s
        user_usd = invocation_cost_usd(sheet, device_type, memory_mb, window_s, requests=0)
        text = f"the whole device for the {window_s:.1f} s window, always on"
        requests = 0
    return PolicyCost(billing, user_usd, user_s, node_s, provider_usd, requests, len(lives), window_s, text, after_s)
