"""What a ``NodeSet`` holds for each node: the node boundary plus a cheap summary for placement
and the node's live usage for billing. ``LocalNode`` is one in this process."""
from __future__ import annotations

from typing import Callable, Protocol, runtime_checkable

from slfaas.billing.meter import Meter
from slfaas.billing.records import InstanceUsage, NodeUsage
from slfaas.errors import NodeError
from slfaas.gpu_node.api import NodeApi, NodeStream
from slfaas.gpu_node.node import Node
from slfaas.gpu_node.types import (BackboneInfo, FunctionSpec, IntegrityEvent, InvocationRequest, InvocationResult,
                                   LogChunk, NodeInfo, NodeSummary)


class NodeLost(NodeError):
    """The node (its agent) is gone: it answers no more calls, and what ran there is lost."""

    def __init__(self, node_id: str, why: str):
        super().__init__(f"node {node_id} is lost: {why}")
        self.node_id = node_id
        self.why = why

    def __reduce__(self):  # type: ignore[no-untyped-def]  # crosses process boundaries (Ray)
        return (NodeLost, (self.node_id, self.why))


@runtime_checkable
class NodeHandle(NodeApi, Protocol):
    """One node of a NodeSet. Any call may raise ``NodeLost``."""

    @property
    def node_id(self) -> str: ...

    @property
    def device(self) -> str: ...

    @property
    def host(self) -> str: ...

    def summary(self) -> NodeSummary: ...

    def node_usage(self) -> NodeUsage | None:
        """The node's usage so far (its meter's snapshot), for the live cost report."""
        ...

    def live_instances(self) -> list[InstanceUsage]:
        """The instances alive on the node now (its meter's), for the live instance listing."""
        ...


LostCallback = Callable[[str, str], None]   # (node id, why): a handle that noticed its node die


class LocalNode:
    """A node in this process (the embedded mode, and one per device with ``--devices``)."""

    def __init__(self, node: Node, meter: Meter | None = None, host: str = "local"):
        self.node = node
        self.meter = meter
        self._host = host

    @property
    def node_id(self) -> str:
        return self.node.node_id

    @property
    def device(self) -> str:
        return self.node.config.device

    @property
    def host(self) -> str:
        return self._host

    def summary(self) -> NodeSummary:
        return self.node.summary()

    def node_usage(self) -> NodeUsage | None:
        return self.meter.snapshot() if self.meter is not None else None

    def live_instances(self) -> list[InstanceUsage]:
        return self.meter.live_instances() if self.meter is not None else []

    # NodeApi
    def prepare(self, function: FunctionSpec) -> BackboneInfo:
        return self.node.prepare(function)

    def invoke(self, request: InvocationRequest) -> InvocationResult:
        return self.node.invoke(request)

    def invoke_stream(self, request: InvocationRequest) -> NodeStream:
        return self.node.invoke_stream(request)

    def cancel(self, request_id: str) -> bool:
        return self.node.cancel(request_id)

    def provision(self, function: FunctionSpec, count: int) -> None:
        self.node.provision(function, count)

    def retire(self, function_name: str, keep_revision: str | None = None, version: str | None = None) -> int:
        return self.node.retire(function_name, keep_revision, version)

    def describe(self, checksums: bool = False) -> NodeInfo:
        return self.node.describe(checksums)

    def logs(self, function_name: str, max_bytes: int = 64 * 1024, offset: int | None = None,
             since_ts: float | None = None) -> LogChunk:
        return self.node.logs(function_name, max_bytes, offset, since_ts)

    def write_log(self, function_name: str, source: str, line: str) -> None:
        self.node.write_log(function_name, source, line)

    def delete_logs(self, function_name: str) -> None:
        self.node.delete_logs(function_name)

    def verify(self) -> tuple[IntegrityEvent, ...]:
        return self.node.verify()

    def shutdown(self) -> None:
        self.node.shutdown()

