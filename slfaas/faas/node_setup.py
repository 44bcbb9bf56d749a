"""The server's nodes, from its settings: one node in this process (the default), one per
device (``--devices cuda:0,cuda:1``), or one agent per GPU of a Ray cluster (``--cluster ray``),
always behind one ``NodeSet`` so the control plane talks to one ``NodeApi``."""
from __future__ import annotations

import glob
import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from prometheus_client import CollectorRegistry

from slfaas.billing.prices import PriceSheet
from slfaas.billing.records import InstanceUsage, NodeUsage, UsageRecord
from slfaas.gpu_node.builder import SandboxSettings, SlotSettings, build_node
from slfaas.gpu_node.cluster.handle import LocalNode
from slfaas.gpu_node.cluster.nodeset import NodeSet
from slfaas.gpu_node.config import NodeConfig
from slfaas.gpu_node.preloader import PreloadConfig
from slfaas.gpu_node.types import IntegrityEvent

if TYPE_CHECKING:
    from slfaas.faas.server import ServerConfig

log = logging.getLogger(__name__)


def resolve_device(device: str) -> str:
    """``cpu``, ``cuda``/``cuda:N``, or ``auto`` (the first GPU if torch sees one, else CPU)."""
    if device == "cpu":
        return "cpu"
    if device == "auto" and (os.environ.get("CUDA_VISIBLE_DEVICES") == "" or not glob.glob("/dev/nvidia[0-9]*")):
        return "cpu"  # no GPU device node: skip importing torch into the control plane
    if device != "auto" and not re.fullmatch(r"cuda(:\d+)?", device):
        raise ValueError(f"--device must be cpu, cuda, cuda:N or auto, got {device!r}")
    try:
        import torch
        has_cuda = torch.cuda.is_available()
        count = torch.cuda.device_count() if has_cuda else 0
    except ImportError:
        has_cuda, count = False, 0
    if device == "auto":
        return "cuda:0" if has_cuda else "cpu"
    index = int(device.split(":")[1]) if ":" in device else 0
    if not has_cuda or index >= count:
        raise ValueError(f"--device {device}: no such CUDA device (torch sees {count})")
    return f"cuda:{index}"


def resolve_devices(devices: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Each of ``--devices`` resolved; a GPU twice is refused (two nodes would each count its
    memory as theirs), ``cpu`` may repeat (several CPU nodes: tests, demos)."""
    names = [d.strip() for d in devices]
    if not names or any(not d for d in names):
        raise ValueError("--devices needs a comma-separated list such as cuda:0,cuda:1 (or cpu,cpu)")
    if "auto" in names:
        raise ValueError("--devices lists devices (cpu, cuda:N), not auto")
    gpus = ["cuda:0" if d == "cuda" else d for d in names if d != "cpu"]
    if len(gpus) != len(set(gpus)):
        raise ValueError(f"--devices names a GPU twice: {','.join(names)}")
    return tuple(resolve_device(d) for d in names)


@dataclass
class ServerNodes:
    nodes: NodeSet
    ray: Any = None             # slfaas.gpu_node.ray.nodes.RayNodes with --cluster
    # (node id, its Prometheus registry) of the nodes in this process; Ray agents' stay there
    metrics: list[tuple[str, CollectorRegistry]] = field(default_factory=list)

    def close(self) -> None:
        self.nodes.shutdown()
        if self.ray is not None:
            self.ray.close()


def _preload(config: "ServerConfig") -> tuple[PreloadConfig, SlotSettings]:
    return (PreloadConfig(min_prewarmed_per_backbone=config.prewarm_min, prewarm_budget_mb=config.prewarm_budget_mb,
                          host_tier_budget_mb=config.host_tier_mb),
            SlotSettings(config.slot_rank, tuple(config.slot_modules)))


def _scheduling(config: "ServerConfig") -> dict[str, Any]:
    """The nodes' scheduling settings (``NodeConfig`` fields)."""
    return dict(scheduler=config.scheduler, ttft_slo_ms=config.ttft_slo_ms,
                max_queue_per_function=config.max_queue_per_function, max_queue_s=config.max_queue_s,
                max_running_batches=config.max_running_batches, shared_max_batch_size=config.shared_max_batch_size,
                shared_gpu_mb=config.shared_gpu_mb)


def keep_alive_settings(config: "ServerConfig") -> dict[str, Any]:
    """The nodes' keep-alive settings (``NodeConfig`` fields)."""
    return dict(keep_alive_s=config.keep_alive_s, keep_alive_policy=config.keep_alive_policy,
                keep_alive_bin_s=config.keep_alive_bin_s)


def check_keep_alive(config: NodeConfig) -> None:
    """The keep-alive flags, checked before anything starts (a ValueError names the flag)."""
    for flag, value, low in (("--keep-alive-s", config.keep_alive_s, 0.0),
                             ("--keep-alive-bin-s", config.keep_alive_bin_s, 0.01)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= low):
            raise ValueError(f"{flag} must be a number of seconds >= {low:g}, got {value!r}")
    try:
        config.keep_alive_default()
    except ValueError as exc:
        raise ValueError(f"keep-alive settings (--keep-alive-policy/--keep-alive-bin-s): {exc}") from None


def build_nodes(config: "ServerConfig", data_dir: Path, prices: PriceSheet,
                on_usage: Callable[[UsageRecord], None], on_node_usage: Callable[[NodeUsage], None],
                on_integrity: Callable[[IntegrityEvent], None],
                on_instance_usage: Callable[[InstanceUsage], None] | None = None) -> ServerNodes:
    sandbox = SandboxSettings(config.sandbox, config.docker_image, max(config.warm_pool, config.docker_warm_pool),
                              config.insecure_sandbox)
    if config.cluster:
        if config.devices:
            raise ValueError("--devices and --cluster do not go together: a Ray cluster's agents take one GPU each")
        if config.backbone != "shared":
            raise ValueError(f"--backbone {config.backbone} is for a baseline on local nodes, not --cluster")
        return _ray_nodes(config, data_dir, prices, sandbox, on_usage, on_node_usage, on_integrity)
    devices = resolve_devices(config.devices) if config.devices else (resolve_device(config.device),)
    nodes = NodeSet()
    preload, slots = _preload(config)
    metrics: list[tuple[str, CollectorRegistry]] = []
    try:
        for index, device in enumerate(devices):
            verify_s = config.verify_interval_s
            if verify_s is None:
                verify_s = 60.0 if device.startswith("cuda") else 0.0
            # the first node keeps its logs where a single node did
            node_dir = data_dir if index == 0 else data_dir / "nodes" / str(index)
            built = build_node(
                NodeConfig(data_dir=node_dir, max_instances=config.max_instances,
                           init_timeout_s=config.init_timeout_s, device=device, verify_interval_s=verify_s,
                           instance_gpu_mb=config.instance_gpu_mb, backbone=config.backbone,
                           **keep_alive_settings(config), **_scheduling(config)),
                sandbox, prices=prices, on_usage=on_usage, on_node_usage=on_node_usage, on_integrity=on_integrity,
                preload=preload, slots=slots, on_instance_usage=on_instance_usage)
            nodes.add(LocalNode(built.node, built.meter))
            metrics.append((built.node.node_id, built.metrics.registry))
    except BaseException:
        nodes.shutdown()
        raise
    return ServerNodes(nodes, metrics=metrics)


def _ray_nodes(config: "ServerConfig", data_dir: Path, prices: PriceSheet, sandbox: SandboxSettings,
               on_usage: Callable[[UsageRecord], None], on_node_usage: Callable[[NodeUsage], None],
               on_integrity: Callable[[IntegrityEvent], None]) -> ServerNodes:
    try:
        from slfaas.gpu_node.ray.nodes import RayClusterSettings, RayNodes, ray_address
        from slfaas.gpu_node.ray.client import NodeSinks
    except ImportError as exc:
        raise ValueError(f"--cluster {config.cluster} needs Ray ({exc}): pip install 'slfaas[ray]'") from None
    device = config.device if config.device in ("cpu", "auto") else "cuda"
    settings = RayClusterSettings(
        address=ray_address(str(config.cluster)), node_data_dir=Path(config.node_data_dir or data_dir / "nodes"),
        sandbox=sandbox, prices=prices, device=device, resource=config.ray_resource,
        max_instances=config.max_instances, init_timeout_s=config.init_timeout_s,
        verify_interval_s=config.verify_interval_s, instance_gpu_mb=config.instance_gpu_mb,
        preload=_preload(config)[0], slots=_preload(config)[1], scheduling=_scheduling(config),
        keep_alive=keep_alive_settings(config))
    code_root = data_dir / "code"
    nodes = NodeSet()
    ray_nodes = RayNodes(settings, nodes, lambda digest: (code_root / f"{digest}.zip").read_bytes(),
                         NodeSinks(on_usage, on_node_usage, on_integrity))
    try:
        count = ray_nodes.start()
    except BaseException:
        nodes.shutdown()
        ray_nodes.close()
        raise
    log.info("%d node agent(s) started on the Ray cluster", count)
    return ServerNodes(nodes, ray_nodes)
