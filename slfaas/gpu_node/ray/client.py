"""``RayNodeClient``: a node handle (``NodeApi`` + summary + usage) that calls a ``NodeAgent``
actor. A call to an agent that died raises ``NodeLost``; the node's own errors (a throttle, a
backbone that failed to load) are raised as themselves.

Streaming uses Ray's streaming generators: the agent yields ``StreamStarted`` once the request
is placed (a refusal raises before it, so capacity errors come before any chunk, as in one
process), then each chunk as the runtime sends it, then ``StreamEnded`` with the result.

A poller collects what the node produces between calls (its usage for billing, integrity
checks, a fresh summary) every ``poll_s`` and notices an agent that died while idle. Usage
records come back inside each result and go to ``sinks.on_usage`` before the result is returned,
as the in-process meter does. Function code is shipped to the agent by digest on first use.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterator

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

from slfaas.billing.records import InstanceUsage, NodeUsage, UsageRecord
from slfaas.errors import NodeError
from slfaas.gpu_node.cluster.handle import LostCallback, NodeLost
from slfaas.gpu_node.ray.agent import AgentIdentity, StreamEnded, StreamStarted
from slfaas.gpu_node.types import (BackboneInfo, FunctionSpec, IntegrityEvent, InvocationRequest, InvocationResult,
                                   LogChunk, NodeInfo, NodeSummary)

log = logging.getLogger(__name__)

CALL_TIMEOUT_S = 60.0       # a control call (describe, logs, retire...) an agent must answer within


@dataclass(frozen=True)
class NodeSinks:
    """Where a remote node's billing and integrity data go on the control plane."""

    on_usage: Callable[[UsageRecord], None] | None = None
    on_node_usage: Callable[[NodeUsage], None] | None = None
    on_integrity: Callable[[IntegrityEvent], None] | None = None


class RayNodeClient:
    def __init__(self, actor: Any, identity: AgentIdentity, code_zip: Callable[[str], bytes],
                 sinks: NodeSinks = NodeSinks(), poll_s: float = 2.0, on_lost: LostCallback | None = None):
        """``code_zip(digest)``: the control plane's zip of that code."""
        self._actor = actor
        self._identity = identity
        self._code_zip = code_zip
        self._sinks = sinks
        self.on_lost = on_lost
        self._lock = threading.Lock()
        self._shipped: set[str] = set()
        self._lost: str | None = None
        self._usage: NodeUsage | None = None
        self._summary: NodeSummary = self._get(actor.summary.remote(), CALL_TIMEOUT_S)
        self._closed = threading.Event()
        self._poller = threading.Thread(target=self._poll, args=(poll_s,), daemon=True,
                                        name=f"ray-node-{identity.node_id[:8]}")
        self._poller.start()

    @property
    def node_id(self) -> str:
        return self._identity.node_id

    @property
    def device(self) -> str:
        return self._identity.device

    @property
    def host(self) -> str:
        return self._identity.host

    @property
    def actor(self) -> Any:
        return self._actor

    # calls
    def _gone(self, why: str) -> NodeLost:
        with self._lock:
            first = self._lost is None
            if first:
                self._lost = why
        if first and self.on_lost is not None:
            self.on_lost(self.node_id, why)
        return NodeLost(self.node_id, self._lost or why)

    def _get(self, ref: Any, timeout_s: float | None = None) -> Any:
        try:
            return ray.get(ref, timeout=timeout_s)
        except RayActorError as exc:
            raise self._gone(f"its agent died ({exc.__class__.__name__})") from None
        except RayTaskError as exc:   # the node's own error, raised by its method
            cause = exc.cause
            raise (cause if isinstance(cause, Exception) else NodeError(str(exc))) from None
        except GetTimeoutError:
            raise NodeError(f"node {self.node_id} did not answer within {timeout_s:.0f} s") from None

    def _next(self, gen: Any) -> Any:
        """The next item of a streaming call (StopIteration at its end)."""
        try:
            ref = next(gen)
        except RayActorError as exc:
            raise self._gone(f"its agent died ({exc.__class__.__name__})") from None
        return self._get(ref)

    def _call(self, method: str, *args: Any, timeout_s: float | None = CALL_TIMEOUT_S) -> Any:
        if self._lost is not None:
            raise NodeLost(self.node_id, self._lost)
        try:
            ref = getattr(self._actor, method).remote(*args)
        except RayActorError as exc:
            raise self._gone(f"its agent died ({exc.__class__.__name__})") from None
        return self._get(ref, timeout_s)

    def _ship(self, spec: FunctionSpec) -> None:
        digest = spec.code_dir.name
        if digest in self._shipped:
            return
        if not self._call("has_code", digest):
            self._call("put_code", digest, self._code_zip(digest), timeout_s=600.0)
        with self._lock:
            self._shipped.add(digest)

    def _took_warm(self, key: tuple[str, str]) -> None:
        """Until the agent's next summary: one warm instance of ``key`` fewer (so that a burst
        placed meanwhile spreads instead of piling onto one instance)."""
        with self._lock:
            free = self._summary.warm_free.get(key, 0)
            if free > 0:
                self._summary = replace(self._summary, warm_free={**self._summary.warm_free, key: free - 1})

    def _deliver(self, result: InvocationResult | None) -> None:
        if result is not None and result.usage is not None and self._sinks.on_usage is not None:
            try:
                self._sinks.on_usage(result.usage)
            except Exception:   # the invocation's own record is kept; never fail it here
                log.exception("storing usage record %s failed", result.request_id)

    # the node handle
    def summary(self) -> NodeSummary:
        if self._lost is not None:
            raise NodeLost(self.node_id, self._lost)
        return self._summary

    def node_usage(self) -> NodeUsage | None:
        try:
            self._usage = self._call("node_usage", timeout_s=10.0)
        except NodeError:    # slow or gone: the last one seen (lost nodes are left out by the set)
            pass
        return self._usage

    def live_instances(self) -> list[InstanceUsage]:
        try:
            return list(self._call("live_instances", timeout_s=10.0))
        except NodeError:    # slow or gone: none listed now
            return []

    def prepare(self, function: FunctionSpec) -> BackboneInfo:
        info = self._call("prepare", function, timeout_s=None)
        self._summary = self._call("summary")   # placement sees the backbone now, not at the next poll
        return info

    def invoke(self, request: InvocationRequest) -> InvocationResult:
        self._ship(request.function)
        self._took_warm(request.function.pool_key)
        result, summary = self._call("invoke", request, timeout_s=None)
        self._summary = summary
        self._deliver(result)
        return result

    def invoke_stream(self, request: InvocationRequest) -> "RayNodeStream":
        self._ship(request.function)
        self._took_warm(request.function.pool_key)
        if self._lost is not None:
            raise NodeLost(self.node_id, self._lost)
        gen = self._actor.invoke_stream.options(num_returns="streaming").remote(request)
        try:
            first = self._next(gen)
        except StopIteration:
            raise NodeError(f"node {self.node_id} ended a stream before it started") from None
        if not isinstance(first, StreamStarted):
            raise NodeError(f"node {self.node_id} began a stream with {type(first).__name__}")
        return RayNodeStream(self, gen)

    def cancel(self, request_id: str) -> bool:
        return self._call("cancel", request_id)

    def provision(self, function: FunctionSpec, count: int) -> None:
        if count:
            self._ship(function)   # its instances start on the agent's host, from its copy of the code
        self._call("provision", function, count)
        self._summary = self._call("summary")

    def retire(self, function_name: str, keep_revision: str | None = None, version: str | None = None) -> int:
        return self._call("retire", function_name, keep_revision, version)

    def describe(self, checksums: bool = False) -> NodeInfo:
        return self._call("describe", checksums, timeout_s=None if checksums else CALL_TIMEOUT_S)

    def logs(self, function_name: str, max_bytes: int = 64 * 1024, offset: int | None = None,
             since_ts: float | None = None) -> LogChunk:
        return self._call("logs", function_name, max_bytes, offset, since_ts)

    def write_log(self, function_name: str, source: str, line: str) -> None:
        self._call("write_log", function_name, source, line)

    def delete_logs(self, function_name: str) -> None:
        self._call("delete_logs", function_name)

    def verify(self) -> tuple[IntegrityEvent, ...]:
        return self._call("verify", timeout_s=None)

    def shutdown(self) -> None:
        """Stop the agent's instances, store its final usage, and end the actor."""
        self._closed.set()
        if self._lost is None:
            try:
                final = self._call("shutdown", timeout_s=120.0)
                if self._sinks.on_node_usage is not None:
                    self._sinks.on_node_usage(final)
            except NodeError as exc:
                log.warning("node %s did not stop cleanly: %s", self.node_id, exc)
        ray.kill(self._actor)

    # between calls
    def _poll(self, poll_s: float) -> None:
        while not self._closed.wait(poll_s):
            try:
                usage, summary, events = self._call("drain", timeout_s=30.0)
            except NodeLost:
                return
            except NodeError as exc:
                log.warning("polling node %s: %s", self.node_id, exc)
                continue
            self._usage, self._summary = usage, summary
            try:
                if self._sinks.on_node_usage is not None:
                    self._sinks.on_node_usage(usage)
                for event in events if self._sinks.on_integrity is not None else ():
                    self._sinks.on_integrity(event)   # type: ignore[misc]
            except Exception:
                log.exception("storing node %s's usage failed", self.node_id)


class RayNodeStream:
    """Chunks as the agent yields them; ``result`` at the end, or ``error`` (``NodeLost`` when the
    agent died mid-stream)."""

    def __init__(self, client: RayNodeClient, gen: Any):
        self._client = client
        self._gen = gen
        self.result: InvocationResult | None = None
        self.error: BaseException | None = None

    def __iter__(self) -> Iterator[bytes]:
        while True:
            try:
                item = self._client._next(self._gen)
            except StopIteration:
                if self.result is None and self.error is None:
                    self.error = NodeError(f"node {self._client.node_id} ended a stream without its result")
                return
            except Exception as exc:   # NodeLost, or the node's own failure
                self.error = exc
                return
            if isinstance(item, bytes):
                yield item
            elif isinstance(item, StreamEnded):
                self._client._summary = item.summary
                self.result = item.result
                self.error = NodeError(item.error) if item.error else None
                self._client._deliver(item.result)
