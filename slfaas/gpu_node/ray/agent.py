"""The node agent as a Ray actor: a ``Node`` built on the host the actor runs on, behind methods
that take and return the node's frozen values.

What differs from a node in the server process: function code arrives by digest from the
control plane (``put_code``) and is cached on this host; base models are read at the path the
control plane names (the same path on every host); usage records travel back inside each
result, and the node's usage and integrity checks are collected by the control plane
(``drain``). ``invoke`` answers with the node's summary too, so the control plane's placement
sees the instance a cold start left behind without another call.

The class is plain Python: ``slfaas.gpu_node.ray.nodes`` makes it an actor (threaded: every
call runs on its own thread, as requests do in the server).
"""
from __future__ import annotations

import logging
import socket
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

from slfaas.billing.prices import PriceSheet
from slfaas.billing.records import InstanceUsage, NodeUsage
from slfaas.errors import NodeError
from slfaas.gpu_node.builder import SandboxSettings, SlotSettings, build_node
from slfaas.gpu_node.cluster.code_cache import CodeCache
from slfaas.gpu_node.config import NodeConfig
from slfaas.gpu_node.preloader import PreloadConfig
from slfaas.gpu_node.types import (BackboneInfo, FunctionSpec, IntegrityEvent, InvocationRequest, InvocationResult,
                                   LogChunk, NodeInfo, NodeSummary)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AgentIdentity:
    node_id: str
    device: str
    host: str                   # the host's name and Ray node id


@dataclass(frozen=True)
class StreamStarted:
    """The first item of a streaming invocation: it was placed (a refusal raises instead)."""


@dataclass(frozen=True)
class StreamEnded:
    result: InvocationResult | None
    error: str | None           # the node failed it (no result)
    summary: NodeSummary


class NodeAgent:
    def __init__(self, config: NodeConfig, sandbox: SandboxSettings, prices: PriceSheet | None, ray_node_id: str,
                 preload: PreloadConfig | None = None, slots: SlotSettings | None = None):
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        self._integrity: list[IntegrityEvent] = []
        self._lock = threading.Lock()
        built = build_node(config, sandbox, prices=prices, on_integrity=self._integrity_checked, preload=preload,
                           slots=slots)
        self.node, self.meter = built.node, built.meter
        self.code = CodeCache(Path(config.data_dir) / "code")
        self.identity = AgentIdentity(self.node.node_id, config.device, f"{socket.gethostname()}/{ray_node_id[:12]}")
        log.info("node agent %s on %s (%s)", self.identity.node_id, self.identity.host, config.device)

    def ready(self) -> AgentIdentity:
        return self.identity

    # code, from the control plane
    def has_code(self, sha256_hex: str) -> bool:
        return self.code.has(sha256_hex)

    def put_code(self, sha256_hex: str, zip_bytes: bytes) -> None:
        self.code.put(sha256_hex, zip_bytes)

    def _local(self, spec: FunctionSpec) -> FunctionSpec:
        """The spec with this host's copy of its code (named by digest)."""
        path = self.code.path(spec.code_dir.name)
        if not path.is_dir():
            raise NodeError(f"code {spec.code_dir.name[:12]} of {spec.name} is not on node {self.identity.node_id}")
        return replace(spec, code_dir=path)

    # NodeApi, with the spec localised
    def prepare(self, function: FunctionSpec) -> BackboneInfo:
        return self.node.prepare(function)

    def invoke(self, request: InvocationRequest) -> tuple[InvocationResult, NodeSummary]:
        result = self.node.invoke(replace(request, function=self._local(request.function)))
        return result, self.node.summary()

    def invoke_stream(self, request: InvocationRequest) -> Iterator[object]:
        """A Ray streaming generator: ``StreamStarted``, the chunks (bytes), ``StreamEnded``."""
        stream = self.node.invoke_stream(replace(request, function=self._local(request.function)))
        yield StreamStarted()
        yield from stream
        error = None if stream.error is None else f"{stream.error.__class__.__name__}: {stream.error}"
        yield StreamEnded(stream.result, error, self.node.summary())

    def cancel(self, request_id: str) -> bool:
        return self.node.cancel(request_id)

    def provision(self, function: FunctionSpec, count: int) -> None:
        self.node.provision(self._local(function) if count else function, count)

    def retire(self, function_name: str, keep_revision: str | None = None, version: str | None = None) -> int:
        return self.node.retire(function_name, keep_revision, version)

    def describe(self, checksums: bool = False) -> NodeInfo:
        return replace(self.node.describe(checksums), host=self.identity.host)

    def summary(self) -> NodeSummary:
        return self.node.summary()

    def logs(self, function_name: str, max_bytes: int = 64 * 1024, offset: int | None = None,
             since_ts: float | None = None) -> LogChunk:
        return self.node.logs(function_name, max_bytes, offset, since_ts)

    def write_log(self, function_name: str, source: str, line: str) -> None:
        self.node.write_log(function_name, source, line)

    def delete_logs(self, function_name: str) -> None:
        self.node.delete_logs(function_name)

    def verify(self) -> tuple[IntegrityEvent, ...]:
        return self.node.verify()

    # what flows back to the control plane
    def _integrity_checked(self, event: IntegrityEvent) -> None:
        with self._lock:
            self._integrity.append(event)

    def drain(self) -> tuple[NodeUsage, NodeSummary, tuple[IntegrityEvent, ...]]:
        """The node's usage now, its summary, and the integrity checks since the last drain."""
        with self._lock:
            events, self._integrity = tuple(self._integrity), []
        return self.meter.snapshot(), self.node.summary(), events

    def node_usage(self) -> NodeUsage:
        """The node's usage now (a live cost report), leaving the integrity checks to ``drain``."""
        return self.meter.snapshot()

    def live_instances(self) -> list[InstanceUsage]:
        """The instances alive on the node now (their lives so far)."""
        return self.meter.live_instances()

    def shutdown(self) -> NodeUsage:
        """Stop every instance; the node's final usage."""
        self.node.shutdown()
        return self.meter.snapshot()

