"""Builds a node from the server's settings: the sandbox backend and its warm pool, the memory
ledger's probes, the meter, the Prometheus metrics and the subscriptions that feed them and
the registry."""
from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from slfaas.billing.meter import Meter
from slfaas.billing.prices import PriceSheet
from slfaas.billing.records import InstanceUsage, NodeUsage, UsageRecord
from slfaas.gpu_node.config import NodeConfig
from slfaas.gpu_node.events import IntegrityChecked, NodeEvent
from slfaas.gpu_node.metering import meter_subscriber
from slfaas import runtime_contract as rc
from slfaas.gpu_node.metrics import NodeMetrics
from slfaas.gpu_node.node import Node
from slfaas.gpu_node.preloader import PreloadConfig, Preloader
from slfaas.gpu_node.resources import private_backbone
from slfaas.gpu_node.resources.adapters import AdapterTiers
from slfaas.gpu_node.resources.backbone import BackboneOwner
from slfaas.gpu_node.resources.device_activity import DeviceActivity
from slfaas.gpu_node.resources.memory import MemoryLedger
from slfaas.gpu_node.sandboxes.base import SandboxFactory
from slfaas.gpu_node.sandboxes.pool_support import Flavour, Prewarm
from slfaas.gpu_node.sandboxes.pools import Pools
from slfaas.gpu_node.sandboxes.warm_pool import WarmPool
from slfaas.gpu_node.types import IntegrityEvent

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SandboxSettings:
    backend: str = "process"            # "process" or "docker"
    docker_image: str | None = None     # --sandbox docker: the runtime image (default slfaas/runtime:local)
    warm_pool: int = 0                  # generic runtimes kept pre-started (processes or containers)
    insecure: bool = False              # process sandbox without isolation: plain processes of this user


@dataclass(frozen=True)
class SlotSettings:
    """The LoRA slots of pre-warmed runtimes (an adapter of higher rank or other modules takes
    the slow path, PEFT's loader) and the prefill lengths they warm up."""

    rank: int = 16
    modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    warmup_tokens: tuple[int, ...] = ()     # () = the runtime's default buckets


@dataclass(frozen=True)
class BuiltNode:
    node: Node
    meter: Meter
    metrics: NodeMetrics


def make_sandbox_factory(settings: SandboxSettings, data_dir: Path | None = None) -> SandboxFactory:
    """The backend, without its pool (``attach_warm_pool``). Raises ValueError with a user-facing
    message for an unknown backend or one that cannot run here."""
    if settings.warm_pool < 0:
        raise ValueError(f"--warm-pool must be 0 or more, got {settings.warm_pool}")
    if settings.backend == "process":
        return _process_sandboxes(settings.insecure)
    if settings.backend == "docker":
        from slfaas.gpu_node.sandboxes.docker import (DEFAULT_IMAGE, DockerSandboxConfig, DockerSandboxFactory,
                                                      DockerUnavailable)
        try:
            return DockerSandboxFactory(DockerSandboxConfig(image=settings.docker_image or DEFAULT_IMAGE,
                                                            owner=str(data_dir or "")))
        except DockerUnavailable as exc:
            raise ValueError(str(exc)) from exc
    raise ValueError(f"unknown sandbox backend {settings.backend!r} (available: process, docker)")


def _process_sandboxes(insecure: bool) -> SandboxFactory:
    """Isolated process sandboxes, or (``insecure``) plain processes; refused where isolation
    is impossible and not waived."""
    import sys

    from slfaas.gpu_node.sandboxes.isolation import HostIsolation, IsolationUnavailable
    from slfaas.gpu_node.sandboxes.process import ProcessSandboxFactory

    if insecure:
        log.warning("process sandbox NOT isolated (--insecure-sandbox): every function runs as this server's "
                    "user and can read the data dir, other functions and their processes")
        return ProcessSandboxFactory()
    try:
        isolation = HostIsolation.probe(sys.executable)
    except IsolationUnavailable as exc:
        raise ValueError(f"the process sandbox cannot isolate functions here: {exc}. Pass --insecure-sandbox "
                         f"to run them unisolated as this user, or use --sandbox docker") from None
    log.info("%s", isolation.describe())
    return ProcessSandboxFactory(isolation=isolation)


def generic_pool(factory: SandboxFactory, size: int, device: str = "cpu") -> WarmPool | None:
    """A warm pool of ``size`` generic runtimes (imports done) for ``factory`` on ``device``."""
    if size <= 0:
        return None
    if factory.name == "process":
        from slfaas.gpu_node.sandboxes.process import ProcessSandboxFactory
        from slfaas.gpu_node.sandboxes.process_pool import process_warm_pool
        assert isinstance(factory, ProcessSandboxFactory)
        return process_warm_pool(factory, size, _base_env, cuda=device.startswith("cuda"))
    if factory.name == "docker":
        from slfaas.gpu_node.sandboxes.docker import DockerSandboxFactory
        from slfaas.gpu_node.sandboxes.docker_pool import docker_warm_pool
        assert isinstance(factory, DockerSandboxFactory)
        return docker_warm_pool(factory, size, device)
    raise ValueError(f"the {factory.name} sandbox has no warm pool")


def attach_warm_pool(factory: SandboxFactory, size: int, device: str = "cpu") -> Pools:
    """Generic runtimes only (no pre-warming): the pools of a node built without a preloader."""
    pools = Pools(generic_pool(factory, size, device))
    factory.attach_pool(pools)
    return pools


def _base_env() -> dict[str, str]:
    from slfaas.gpu_node.lifecycle.runtime_env import node_environ, runtime_fixed_env

    return {**node_environ(), **runtime_fixed_env()}


def _prewarmed_pools(node: Node, factory: SandboxFactory, slots: SlotSettings,
                     activity: DeviceActivity | None = None) -> Callable[[Flavour, int], WarmPool] | None:
    """How the node makes a pool of runtimes pre-warmed for one backbone (processes or containers).
    ``activity``: a process runtime gets its page and pauses its warm-up while requests run."""
    if factory.name not in ("process", "docker"):
        return None

    def make(flavour: Flavour, count: int) -> WarmPool:
        def prewarm() -> Prewarm:
            attachment = node.backbones.acquire(flavour.base_model).attach(node.launcher.socket_dir,
                                                                           f"pool-{uuid.uuid4().hex[:8]}")
            env = {rc.ENV_PREWARM: "1", rc.ENV_BASE_MODEL_DIR: str(flavour.base_model), rc.ENV_DEVICE: flavour.device,
                   rc.ENV_SLOT_RANK: str(slots.rank), rc.ENV_SLOT_MODULES: ",".join(slots.modules), **attachment.env}
            if slots.warmup_tokens:
                env[rc.ENV_WARMUP_TOKENS] = ",".join(map(str, slots.warmup_tokens))
            inherit, owned = attachment.inherit_fds, attachment.owned_fds
            page = activity.reader_fd() if activity is not None and factory.name == "process" else None
            if page is not None:
                env[rc.ENV_DEVICE_ACTIVITY_FD] = str(page)
                inherit, owned = (*inherit, page), (*owned, page)
            return Prewarm(env, inherit, owned)
        if factory.name == "docker":
            from slfaas.gpu_node.sandboxes.docker import DockerSandboxFactory
            from slfaas.gpu_node.sandboxes.docker_pool import docker_warm_pool
            assert isinstance(factory, DockerSandboxFactory)
            return docker_warm_pool(factory, count, flavour.device, flavour, prewarm)
        from slfaas.gpu_node.sandboxes.process import ProcessSandboxFactory
        from slfaas.gpu_node.sandboxes.process_pool import process_warm_pool
        assert isinstance(factory, ProcessSandboxFactory)
        return process_warm_pool(factory, count, _base_env, flavour.device.startswith("cuda"), flavour, prewarm)
    return make


def _ledger(config: NodeConfig) -> MemoryLedger:
    if not config.device.startswith("cuda"):
        return MemoryLedger(config.instance_gpu_mb)
    from slfaas.gpu_node.resources.gpu_stats import device_free_mb, process_gpu_mb

    def measure(pids: dict[int, str]) -> dict[str, float] | None:
        got = process_gpu_mb(config.device, set(pids))
        return None if got is None else {pids[p]: float(mb) for p, mb in got.items()}

    return MemoryLedger(config.instance_gpu_mb, free_mb=lambda: device_free_mb(config.device), measure=measure)


def build_node(config: NodeConfig, sandbox: SandboxSettings, prices: PriceSheet | None = None,
               on_usage: Callable[[UsageRecord], None] | None = None,
               on_node_usage: Callable[[NodeUsage], None] | None = None,
               on_integrity: Callable[[IntegrityEvent], None] | None = None,
               preload: PreloadConfig | None = None, slots: SlotSettings | None = None,
               on_instance_usage: Callable[[InstanceUsage], None] | None = None) -> BuiltNode:
    from slfaas.gpu_node.resources.gpu_stats import gpu_name

    preload = preload or PreloadConfig()
    shared = private_backbone.check_mode(config.backbone) == private_backbone.SHARED
    if not shared:   # a pre-warmed runtime is built around the node's shared backbone: none here
        preload = replace(preload, min_prewarmed_per_backbone=0, prewarm_budget_mb=0)
    factory = make_sandbox_factory(sandbox, config.data_dir)
    metrics = NodeMetrics()

    def usage(rec: UsageRecord) -> None:
        metrics.on_usage(rec)
        if on_usage is not None:
            on_usage(rec)
    try:
        node_id = uuid.uuid4().hex[:12]
        meter = Meter(node_id, config.device, prices, gpu_name=gpu_name(config.device), on_usage=usage,
                      on_node_usage=on_node_usage, on_instance_usage=on_instance_usage)
        generic = generic_pool(factory, sandbox.warm_pool, config.device)
    except BaseException:
        factory.close()
        raise
    ledger = _ledger(config)
    node = Node(config, factory, BackboneOwner(private_backbone.owner_device(config.backbone, config.device)),
                ledger=ledger, node_id=node_id, tiers=AdapterTiers(preload.host_tier_budget_mb << 20))
    activity = DeviceActivity()
    node.bus.subscribe(activity.on_event)
    pools = Pools(generic, _prewarmed_pools(node, factory, slots or SlotSettings(), activity) if shared else None)
    factory.attach_pool(pools)
    node.preloader = Preloader(preload, config.device, pools, node.tiers, node.backbones.loaded,
                               ledger.instance_estimate_mb)
    node.bus.subscribe(node.preloader.on_event)
    node.preloader.start()
    node.bus.subscribe(meter_subscriber(meter))
    node.bus.subscribe(metrics.on_event)
    metrics.watch(node.describe, node.queued)
    if on_integrity is not None:
        def integrity(event: NodeEvent) -> None:
            if isinstance(event, IntegrityChecked):
                on_integrity(event.event)
        node.bus.subscribe(integrity)
    meter.start_flushing(probe=lambda: (len(node.backbones.loaded()), factory.warm_count()))
    node.on_shutdown.append(meter.close)
    node.on_shutdown.append(activity.close)
    return BuiltNode(node, meter, metrics)
