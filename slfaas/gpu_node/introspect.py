"""The node's reports: ``describe`` (everything, for operators and the API) and ``summary``
(a few numbers for a NodeSet's placement)."""
from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from slfaas.gpu_node.sandboxes.pools import Pools
from slfaas.gpu_node.schedulers import concurrency_limit
from slfaas.gpu_node.types import NodeInfo, NodeSummary

if TYPE_CHECKING:
    from slfaas.gpu_node.node import Node


def describe_node(node: "Node", checksums: bool = False) -> NodeInfo:
    """The node's full report (``NodeApi.describe``)."""
    backbones = tuple(replace(b, sha256=node.backbones.checksum(Path(b.model_path))) if checksums else b
                      for b in node.backbones.loaded())
    measured = {i.instance_id: mb for i in node.table.all() if (mb := node.ledger.measured(i.instance_id))}
    infos = node.table.infos(measured)
    gpu = None
    if node.config.device.startswith("cuda"):
        from slfaas.gpu_node.resources.gpu_stats import gpu_memory_report
        gpu = gpu_memory_report(node.config.device, {i.pid: i.instance_id for i in infos if i.pid},
                                sum(b.size_bytes for b in backbones if b.device == node.config.device),
                                sum(i.adapter_bytes or 0 for i in infos),
                                int(node.ledger.instance_estimate_mb()))
    pool = node.sandboxes.pool
    pools = pool.describe() if isinstance(pool, Pools) else ()
    return NodeInfo(node.node_id, node.config.device, node.sandboxes.name, node.config.max_instances,
                    pool.size if pool is not None else 0, node.sandboxes.warm_count(), backbones, infos, gpu,
                    pools, (node.tiers.info(),), node.preloader.last if node.preloader is not None else None,
                    backbone_mode=node.config.backbone, concurrency_limit=concurrency_limit(node.config),
                    provisioned=node.provisioner.infos(), keep_alive_policy=node.config.keep_alive_policy)


def summarize_node(node: "Node") -> NodeSummary:
    """What a NodeSet's placement needs of the node: a few numbers, no instance details."""
    snap = node.table.snapshot(time.time(), node.config.max_instances, node.ledger.gpu_view())
    warm: dict[tuple[str, str], int] = {}
    for v in snap.instances:
        if v.has_room:
            warm[v.pool_key] = warm.get(v.pool_key, 0) + 1
    loaded = [b for b in node.backbones.loaded() if node.config.backbone == "shared"]   # none to borrow otherwise
    load_s = sum(b.load_s for b in loaded)
    return NodeSummary(node.node_id, node.config.device, warm, {b.model_path: b.size_bytes for b in loaded},
                       sum(1 for v in snap.instances if v.alive),
                       sum(1 for v in snap.instances if v.state == "IDLE"), node.config.max_instances,
                       sum(b.size_bytes for b in loaded) / load_s if load_s > 0 else 0.0,
                       snap.gpu.free_mb if snap.gpu else None, snap.gpu.instance_mb if snap.gpu else 0.0,
                       {name: "host" for name in node.tiers.info().adapters})
