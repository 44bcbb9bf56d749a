"""Which node of several runs a request: an IO-free ranking of the nodes, best first.

Preference, in order: a node with a warm instance of the function's revision that has room; a
node whose adapter tier holds the function's adapter; a node holding its backbone; then the
node whose estimated cold start (the backbone and adapter loaded at that node's measured
bandwidth, plus its queue) is least, and among equals the one with fewer requests running, then
fewer instances (so cold starts spread over nodes). Only nodes that can hold one more instance are ranked:
an instance slot (or an idle instance to evict) and, on a GPU, the device memory for the
instance and a backbone it does not hold yet. Ties go to the node that joined first, so the
same snapshot always gives the same answer.

``NodeView.adapter_tiers`` says which adapters a node's tiers hold (adapter → tier name; nodes
report their host tier of sealed memfds), with each tier's bandwidth in ``tier_bytes_per_s``
(none given: the copy counts as free). An adapter in no tier counts as loaded from disk.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from slfaas.gpu_node.policy.view import PoolKey

MIB = 1024 * 1024

# preference classes, lower is better
WARM, ADAPTER_RESIDENT, BACKBONE_RESIDENT, COLD = 0, 1, 2, 3


@dataclass(frozen=True)
class NodeView:
    """What the cluster's placement knows of one node (from its summary and the control plane's
    own count of the requests it has sent there)."""

    node_id: str
    order: int                                  # join order: the tie-breaker
    warm_free: Mapping[PoolKey, int]            # instances of a revision with room for one more request
    backbones: frozenset[str]                   # resident backbones (model paths)
    live_instances: int
    idle_instances: int                         # idle instances a cold start may evict
    max_instances: int
    load_bytes_per_s: float                     # measured backbone load bandwidth (disk → device)
    inflight: int = 0                           # requests the control plane has running there
    queue_s: float = 0.0                        # estimated wait before a new request starts there
    free_mb: float | None = None                # device memory free; None: no admission (CPU)
    instance_mb: float = 0.0                    # what one more instance is expected to need
    adapter_tiers: Mapping[str, str] = field(default_factory=dict)      # adapter → tier holding it
    tier_bytes_per_s: Mapping[str, float] = field(default_factory=dict)  # tier → load bandwidth


@dataclass(frozen=True)
class Want:
    """The request, as placement sees it."""

    pool_key: PoolKey
    backbone: str               # model path
    backbone_bytes: int = 0     # 0: unknown (not loaded anywhere yet)
    adapter: str = ""           # the adapter's identity in tiers (its code digest)
    adapter_bytes: int = 0


@dataclass(frozen=True)
class Ranked:
    node_id: str
    preference: int             # WARM, ADAPTER_RESIDENT, BACKBONE_RESIDENT or COLD
    evicts: bool                # a cold start there must first stop an idle instance
    cold_start_s: float         # estimated; 0 for a warm instance


def estimate_cold_start_s(node: NodeView, want: Want) -> float:
    """Load time of what the node lacks, at its bandwidths, plus its queue."""
    load_s = 0.0
    if want.backbone not in node.backbones and node.load_bytes_per_s > 0:
        load_s += want.backbone_bytes / node.load_bytes_per_s
    tier = node.adapter_tiers.get(want.adapter) if want.adapter else None
    adapter_bps = node.tier_bytes_per_s.get(tier, 0.0) if tier is not None else node.load_bytes_per_s
    if adapter_bps > 0:
        load_s += want.adapter_bytes / adapter_bps
    return load_s + node.queue_s


def _room(node: NodeView, want: Want) -> bool | None:
    """True: one more instance fits as it is; False: only after evicting idle instances;
    None: it does not fit."""
    slot_free = node.live_instances < node.max_instances
    if not slot_free and node.idle_instances == 0:
        return None
    if node.free_mb is None:
        return slot_free
    need_mb = node.instance_mb + (0 if want.backbone in node.backbones else want.backbone_bytes / MIB)
    if slot_free and node.free_mb >= need_mb:
        return True
    # each evicted idle instance gives its memory back; one is evicted anyway at the slot limit
    if node.idle_instances and node.free_mb + node.idle_instances * node.instance_mb >= need_mb:
        return False
    return None


def why_no_room(nodes: tuple[NodeView, ...] | list[NodeView], want: Want) -> tuple[str, str]:
    """When ``rank`` found no node: the AWS error type and a message that says what is short
    (device memory when some node had an instance slot but not the memory, else instances)."""
    memory_short = [n for n in nodes if n.free_mb is not None
                    and (n.live_instances < n.max_instances or n.idle_instances) and _room(n, want) is None]
    if memory_short:
        def need_mb(n: NodeView) -> float:
            return n.instance_mb + (0 if want.backbone in n.backbones else want.backbone_bytes / MIB)
        n = min(memory_short, key=lambda n: (need_mb(n) - (n.free_mb or 0.0), n.node_id))   # the nearest to fitting
        where = ("the node" if len(nodes) == 1 else
                 f"the {len(memory_short)} of {len(nodes)} nodes with an instance slot free")
        return ("InsufficientGpuMemory",
                f"Not enough GPU memory for another instance on {where}: {(n.free_mb or 0.0) / 1024:.1f} GiB "
                f"free, {need_mb(n) / 1024:.1f} GiB needed, and stopping idle instances would not make room")
    return ("ConcurrentInvocationLimitExceeded", "Every node is at its instance or memory limit, all instances busy")


def rank(nodes: tuple[NodeView, ...] | list[NodeView], want: Want) -> tuple[Ranked, ...]:
    """The nodes that can take the request, in the order to try them (the first may still
    refuse when its state changed since the snapshot; the next one is tried then)."""
    out: list[tuple[tuple, Ranked]] = []
    for node in nodes:
        if node.warm_free.get(want.pool_key, 0) > 0:
            out.append(((WARM, False, 0.0, node.inflight, 0, node.order, node.node_id),
                        Ranked(node.node_id, WARM, False, 0.0)))
            continue
        room = _room(node, want)
        if room is None:
            continue
        if want.adapter and want.adapter in node.adapter_tiers:
            preference = ADAPTER_RESIDENT
        elif want.backbone in node.backbones:
            preference = BACKBONE_RESIDENT
        else:
            preference = COLD
        cold_s = estimate_cold_start_s(node, want)
        out.append(((preference, not room, cold_s, node.inflight, node.live_instances, node.order, node.node_id),
                    Ranked(node.node_id, preference, not room, cold_s)))
    out.sort(key=lambda pair: pair[0])
    return tuple(r for _key, r in out)
