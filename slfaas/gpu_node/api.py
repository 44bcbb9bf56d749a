"""The node boundary: everything the control plane (and a Ray actor's client) may ask of a node.

Arguments and results are the frozen values of ``slfaas.gpu_node.types``, so a node can run in
this process (``Node``) or behind a remote call, and the control plane's tests can use a fake.
"""
from __future__ import annotations

from typing import Iterator, Protocol, runtime_checkable

from slfaas.gpu_node.types import (BackboneInfo, FunctionSpec, IntegrityEvent, InvocationRequest, InvocationResult,
                                   LogChunk, NodeInfo)


class NodeStream(Protocol):
    """A streaming invocation: iterate for the response's chunks as the runtime sends them;
    once exhausted, ``result`` says how it ended (or ``error``: the node failed it)."""

    result: InvocationResult | None
    error: BaseException | None

    def __iter__(self) -> Iterator[bytes]: ...


@runtime_checkable
class NodeApi(Protocol):
    def prepare(self, function: FunctionSpec) -> BackboneInfo:
        """Make the function's backbone resident (the Pending → Active step)."""
        ...

    def invoke(self, request: InvocationRequest) -> InvocationResult:
        """Run one invocation to its end. Raises ``TooManyRequests`` when the node has no room."""
        ...

    def invoke_stream(self, request: InvocationRequest) -> NodeStream:
        """Start a streaming invocation; capacity errors raise here, before any chunk."""
        ...

    def cancel(self, request_id: str) -> bool:
        """Stop the work of an invocation whose caller has gone; False if it is not running here."""
        ...

    def provision(self, function: FunctionSpec, count: int) -> None:
        """Hold ``count`` initialised instances of ``function``'s version (provisioned
        concurrency): started ahead of requests, never reaped or evicted, re-started if they
        die; 0 releases them. Progress shows in ``describe().provisioned``."""
        ...

    def retire(self, function_name: str, keep_revision: str | None = None, version: str | None = None) -> int:
        """Stop instances of a function (of ``version`` only, when given) except ``keep_revision``'s."""
        ...

    def describe(self, checksums: bool = False) -> NodeInfo: ...

    def logs(self, function_name: str, max_bytes: int = 64 * 1024, offset: int | None = None,
             since_ts: float | None = None) -> LogChunk:
        """A function's log, whole lines: its last ``max_bytes``; or, with ``offset`` (a previous
        chunk's ``next_offset``) or ``since_ts``, at most ``max_bytes`` from there."""
        ...

    def write_log(self, function_name: str, source: str, line: str) -> None: ...

    def delete_logs(self, function_name: str) -> None: ...

    def verify(self) -> tuple[IntegrityEvent, ...]:
        """Check every backbone now; a mismatch stops its borrowers and reloads it."""
        ...

    def shutdown(self) -> None: ...
