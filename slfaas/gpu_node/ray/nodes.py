"""The control plane's side of a Ray cluster: connect, start one node agent per GPU of every Ray
node (one per node in CPU mode), add each to the ``NodeSet``, and keep watching for nodes that
join later.

An agent is pinned to its Ray node (``NodeAffinitySchedulingStrategy``), reserves no CPU (its
instances are processes of their own) and, on a GPU node, one GPU (Ray then shows it that GPU
alone, as ``cuda:0``). Agents are named ``slfaas-node-<Ray node id>-<index>`` in the ``slfaas``
namespace. With ``resource`` set, only Ray nodes that advertise that custom
resource get agents (e.g. keep the head node for the control plane). An agent that dies is
not started again on the same Ray node: the node is lost until it rejoins the cluster (a Ray
node that restarts has a new id and gets a new agent).
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from slfaas.billing.prices import PriceSheet
from slfaas.gpu_node.builder import SandboxSettings, SlotSettings
from slfaas.gpu_node.cluster.nodeset import NodeSet
from slfaas.gpu_node.config import NodeConfig
from slfaas.gpu_node.preloader import PreloadConfig
from slfaas.gpu_node.ray.agent import AgentIdentity, NodeAgent
from slfaas.gpu_node.ray.client import NodeSinks, RayNodeClient

log = logging.getLogger(__name__)

MAX_CONCURRENT_CALLS = 1000     # an agent's threads: each running invocation holds one


def ray_address(cluster: str) -> str:
    """``ray`` (the cluster this host belongs to: ``RAY_ADDRESS`` or the local ``ray start``) or
    ``ray://HOST:PORT`` (a Ray Client address). Raises ValueError for anything else."""
    if cluster == "ray":
        return "auto"
    if cluster.startswith("ray://") and len(cluster) > len("ray://"):
        return cluster
    raise ValueError(f"--cluster must be ray or ray://HOST:PORT, got {cluster!r}")


def agent_name(ray_node_id: str, index: int) -> str:
    """The actor's name in the ``slfaas`` namespace (``ray.get_actor`` finds it: operators, tests)."""
    return f"slfaas-node-{ray_node_id}-{index}"


@dataclass(frozen=True)
class RayClusterSettings:
    address: str                                # ray.init's: "auto" or "ray://HOST:PORT"
    node_data_dir: Path                         # on every host: each agent's data dir goes beneath it
    sandbox: SandboxSettings = field(default_factory=SandboxSettings)
    prices: PriceSheet | None = None
    device: str = "auto"                        # "cpu": CPU agents only; "auto": one per GPU where there are GPUs
    resource: str | None = None                 # only Ray nodes advertising this custom resource get agents
    max_instances: int = 32
    init_timeout_s: float = 300.0
    verify_interval_s: float | None = None      # None: 60 s on CUDA, on demand on CPU
    instance_gpu_mb: int = 1536
    preload: PreloadConfig | None = None        # the agents' preloaders (None: the defaults)
    slots: SlotSettings | None = None           # pre-warmed runtimes' LoRA slots (None: the defaults)
    scheduling: Mapping[str, Any] = field(default_factory=dict)   # NodeConfig's scheduling fields
    keep_alive: Mapping[str, Any] = field(default_factory=dict)   # NodeConfig's keep-alive fields
    watch_interval_s: float = 5.0               # how often new Ray nodes are looked for
    start_timeout_s: float = 300.0              # an agent's start (its sandbox backend, warm pool)
    poll_s: float = 2.0                         # how often each agent's usage is collected


class RayNodes:
    def __init__(self, settings: RayClusterSettings, nodes: NodeSet, code_zip: Callable[[str], bytes],
                 sinks: NodeSinks):
        self.settings = settings
        self.nodes = nodes
        self._code_zip = code_zip
        self._sinks = sinks
        self._agents: dict[str, list[RayNodeClient]] = {}   # Ray node id → its agents
        self._refused: set[str] = set()                    # Ray nodes whose agent failed to start
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._watcher: threading.Thread | None = None

    def start(self) -> int:
        """Connect and start the agents of the nodes there now; raises ValueError when none
        could start. Then watch for nodes that join."""
        if not ray.is_initialized():
            try:
                ray.init(address=self.settings.address, namespace="slfaas", logging_level=logging.WARNING)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                where = "RAY_ADDRESS or a local `ray start`" if self.settings.address == "auto" else \
                    self.settings.address
                raise ValueError(f"cannot join the Ray cluster ({where}): {str(exc).splitlines()[0]}") from None
        started = self.scan()
        if not started:
            raise ValueError("no node agent could start on the Ray cluster (no eligible node"
                             + (f" advertises the resource {self.settings.resource!r}" if self.settings.resource
                                else "") + ")")
        self._watcher = threading.Thread(target=self._watch, daemon=True, name="ray-watch")
        self._watcher.start()
        return started

    def _watch(self) -> None:
        while not self._closed.wait(self.settings.watch_interval_s):
            try:
                self.scan()
            except Exception:
                log.exception("looking for new Ray nodes failed")

    def scan(self) -> int:
        """Start agents on eligible Ray nodes that have none; how many started."""
        started = 0
        for node in ray.nodes():
            node_id = node["NodeID"]
            with self._lock:
                known = node_id in self._agents or node_id in self._refused
            if known or not node.get("Alive") or not self._eligible(node):
                continue
            started += self._start_agents(node)
        return started

    def _eligible(self, node: dict) -> bool:
        resources = node.get("Resources", {})
        if self.settings.resource is not None and resources.get(self.settings.resource, 0) <= 0:
            return False
        return not (self.settings.device.startswith("cuda") and resources.get("GPU", 0) < 1)

    def _devices(self, node: dict) -> list[tuple[str, dict[str, Any]]]:
        gpus = int(node.get("Resources", {}).get("GPU", 0))
        if self.settings.device == "cpu" or gpus == 0:
            return [("cpu", {})]
        return [("cuda:0", {"num_gpus": 1})] * gpus

    def _start_agents(self, node: dict) -> int:
        ray_node_id = node["NodeID"]
        clients: list[RayNodeClient] = []
        with self._lock:
            self._agents[ray_node_id] = clients
        for index, (device, options) in enumerate(self._devices(node)):
            s = self.settings
            verify_s = s.verify_interval_s if s.verify_interval_s is not None else (60.0 if device != "cpu" else 0.0)
            config = NodeConfig(data_dir=Path(s.node_data_dir) / f"{ray_node_id[:12]}-{index}",
                                max_instances=s.max_instances,
                                init_timeout_s=s.init_timeout_s, device=device, verify_interval_s=verify_s,
                                instance_gpu_mb=s.instance_gpu_mb, **s.keep_alive, **s.scheduling)
            actor = ray.remote(NodeAgent).options(
                name=agent_name(ray_node_id, index), num_cpus=0, max_concurrency=MAX_CONCURRENT_CALLS,
                scheduling_strategy=NodeAffinitySchedulingStrategy(ray_node_id, soft=False), **options,
            ).remote(config, s.sandbox, s.prices, ray_node_id, s.preload, s.slots)
            try:
                identity: AgentIdentity = ray.get(actor.ready.remote(), timeout=s.start_timeout_s)
                client = RayNodeClient(actor, identity, self._code_zip, self._sinks, s.poll_s,
                                       on_lost=self.nodes.mark_lost)
            except Exception as exc:
                log.error("the node agent on Ray node %s (%s) did not start: %s", ray_node_id[:12], device, exc)
                ray.kill(actor)
                with self._lock:
                    self._refused.add(ray_node_id)
                continue
            clients.append(client)
            self.nodes.add(client)
        return len(clients)

    def clients(self) -> list[RayNodeClient]:
        with self._lock:
            return [c for agents in self._agents.values() for c in agents]

    def close(self) -> None:
        """Stop watching and disconnect (the agents were stopped by the NodeSet's shutdown; any
        left end with this driver, which owns them)."""
        self._closed.set()
        if self._watcher is not None:
            self._watcher.join(timeout=self.settings.watch_interval_s + 5)
        if ray.is_initialized():
            ray.shutdown()
