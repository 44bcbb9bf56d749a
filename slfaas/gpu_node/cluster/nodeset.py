"""``NodeSet``: one ``NodeApi`` over several nodes, so the control plane keeps talking to one node.

Each request goes to the best node by ``policy.cluster_placement`` (warm instance, adapter
tier, backbone, least estimated cold start, within memory); a node that refuses it (full since
its summary) hands it to the next one. ``prepare`` loads the backbone on every live node (each
device holds one copy, as a single node does), and a node that joins later loads the backbones
prepared so far in the background; until then placement counts their load time against it.

Provisioned concurrency (``provision``) is held on one node per function version: the node
that holds it already, else the one placement ranks first for the version (its warm instances,
adapter, backbone, room), so that requests, which placement sends to warm instances, find the
held ones. A lost node's targets move to the best live node.

A node whose agent dies is marked lost the first time a call to it fails: the invocations it
was running end as function errors (``Runtime.NodeLost``), and it gets no more work. Retire,
verify, cancel, log deletion and shutdown go to every live node; logs are merged
(``logs_merge``); ``describe`` adds the nodes up and lists each in ``NodeInfo.nodes``.
"""
from __future__ import annotations

import functools
import logging
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Callable, TypeVar

from slfaas.billing.records import InstanceUsage, NodeUsage
from slfaas.errors import NodeError, TooManyRequests
from slfaas.gpu_node.api import NodeStream
from slfaas.gpu_node.cluster.aggregate import aggregate
from slfaas.gpu_node.cluster.handle import NodeHandle, NodeLost
from slfaas.gpu_node.cluster.logs_merge import merge, unpack_offsets
from slfaas.gpu_node.cluster.outcomes import NODE_LOST, FinishedStream, TrackedStream, lost_result
from slfaas.gpu_node.cluster.targets import ProvisionedTargets, Target
from slfaas.gpu_node.policy.cluster_placement import NodeView, Want, rank, why_no_room
from slfaas.gpu_node.types import (BackboneInfo, FunctionSpec, IntegrityEvent, InvocationRequest, InvocationResult,
                                   LogChunk, NodeInfo)

log = logging.getLogger(__name__)

EWMA_WEIGHT = 0.2       # of the newest invocation in a node's mean duration (its queue estimate)
T = TypeVar("T")


@dataclass
class _Member:
    handle: NodeHandle
    slot: int                                   # join order: log offsets and placement ties
    lost: str | None = None                     # why, once lost
    last_info: NodeInfo | None = None
    inflight: dict[str, tuple[str, str]] = field(default_factory=dict)   # request id → pool key
    mean_s: float = 0.0                         # recent invocation duration (EWMA)

    @property
    def node_id(self) -> str:
        return self.handle.node_id


class NodeSet:
    def __init__(self, handles: list[NodeHandle] | tuple[NodeHandle, ...] = (), set_id: str | None = None,
                 on_lost: Callable[[str, str], None] | None = None):
        """``on_lost(node_id, why)``: told once when a node is found dead (e.g. to start another)."""
        self.set_id = set_id or f"nodes-{uuid.uuid4().hex[:8]}"
        self.on_lost = on_lost
        self._lock = threading.Lock()
        self._placing = threading.Lock()      # one placement at a time: see _candidates
        self._members: list[_Member] = []
        self._backbone_bytes: dict[str, int] = {}
        self._prepared: dict[str, FunctionSpec] = {}     # model path → a spec that loads it (for joiners)
        self._targets = ProvisionedTargets()
        self._provisioning = threading.Lock()            # one provision (or re-homing) at a time
        self._closed = False
        for h in handles:
            self.add(h)

    # membership
    def add(self, handle: NodeHandle) -> None:
        """A node joins: placement uses it at once; the backbones prepared so far load there in
        the background."""
        with self._lock:
            if any(m.node_id == handle.node_id for m in self._members):
                raise ValueError(f"node {handle.node_id} is in the set already")
            member = _Member(handle, len(self._members))
            self._members.append(member)
            specs = list(self._prepared.values())
        log.info("node %s (%s on %s) joined; %d node(s) live", handle.node_id, handle.device, handle.host,
                 len(self.live()))
        if specs:
            threading.Thread(target=self._prepare_joiner, args=(member, specs), daemon=True,
                             name=f"join-{handle.node_id[:8]}").start()

    def _prepare_joiner(self, member: _Member, specs: list[FunctionSpec]) -> None:
        for spec in specs:
            try:
                self._call(member, lambda h: h.prepare(spec))
            except (NodeError, OSError) as exc:
                log.warning("node %s could not load %s: %s", member.node_id, spec.base_model_path, exc)

    def mark_lost(self, node_id: str, why: str) -> bool:
        """Take a node out of placement (its agent died); False if it was not live."""
        with self._lock:
            member = next((m for m in self._members if m.node_id == node_id and m.lost is None), None)
            if member is None:
                return False
            member.lost = why
        log.error("node %s lost (%s): %d invocation(s) in flight there fail; %d node(s) remain", node_id, why,
                  len(member.inflight), len(self.live()))
        if self.on_lost is not None:
            self.on_lost(node_id, why)
        moving = self._targets.on_node(node_id)
        if moving:
            threading.Thread(target=self._rehome, args=(moving,), daemon=True, name=f"rehome-{node_id[:8]}").start()
        return True

    def live(self) -> list[NodeHandle]:
        with self._lock:
            return [m.handle for m in self._members if m.lost is None]

    def _live_members(self) -> list[_Member]:
        with self._lock:
            return [m for m in self._members if m.lost is None]

    def _call(self, member: _Member, fn: Callable[[NodeHandle], T]) -> T:
        try:
            return fn(member.handle)
        except NodeLost as exc:
            self.mark_lost(member.node_id, exc.why)
            raise

    def _each(self, fn: Callable[[NodeHandle], T]) -> list[T]:
        """``fn`` on every live node; lost ones are marked and skipped."""
        out = []
        for m in self._live_members():
            try:
                out.append(self._call(m, fn))
            except NodeLost:
                continue
        return out

    def node_usages(self) -> list[NodeUsage]:
        """Every live node's usage now (billing's live view; lost nodes' last flushes are stored)."""
        return [u for u in self._each(lambda h: h.node_usage()) if u is not None]

    def live_instances(self) -> list[InstanceUsage]:
        """The instances alive on every live node now (billing's live instance listing)."""
        return [i for lives in self._each(lambda h: h.live_instances()) for i in lives]

    # placement
    def _want(self, function: FunctionSpec) -> Want:
        model = str(function.base_model_path)
        with self._lock:
            size = self._backbone_bytes.get(model, 0)
        return Want(function.pool_key, model, size, function.code_dir.name)

    def _views(self) -> list[tuple[_Member, NodeView]]:
        out = []
        for m in self._live_members():
            try:
                s = self._call(m, lambda h: h.summary())
            except NodeLost:
                continue
            with self._lock:
                inflight, queue_s = len(m.inflight), len(m.inflight) * m.mean_s
                for path, size in s.backbones.items():
                    self._backbone_bytes.setdefault(path, size)
            out.append((m, NodeView(m.node_id, m.slot, dict(s.warm_free), frozenset(s.backbones), s.live_instances,
                                    s.idle_instances, s.max_instances, s.load_bytes_per_s, inflight, queue_s,
                                    s.free_mb, s.instance_mb, dict(s.adapter_tiers), dict(s.tier_bytes_per_s))))
        return out

    def _candidates(self, request: InvocationRequest) -> tuple[list[_Member], list[NodeView]]:
        """The nodes to try, best first, and the views they were ranked by (a refusal explains
        itself from them); the first already counts the request as running there (ranking and
        counting are one step, so a burst placed at once spreads)."""
        with self._placing:
            views = self._views()
            by_id = {m.node_id: m for m, _v in views}
            order = [by_id[r.node_id] for r in rank([v for _m, v in views], self._want(request.function))]
            if order:
                self._begin(order[0], request)
        return order, [v for _m, v in views]

    def _begin(self, member: _Member, request: InvocationRequest) -> None:
        with self._lock:
            member.inflight[request.request_id] = request.function.pool_key

    def _end(self, member: _Member, request_id: str, result: InvocationResult | None = None) -> None:
        with self._lock:
            member.inflight.pop(request_id, None)
            if result is not None and result.error_type != NODE_LOST:
                took_s = (result.duration_ms + (result.init_duration_ms or 0.0)) / 1000
                member.mean_s = (took_s if member.mean_s == 0
                                 else (1 - EWMA_WEIGHT) * member.mean_s + EWMA_WEIGHT * took_s)

    def _no_room(self, refusal: TooManyRequests | None, function: FunctionSpec,
                 views: list[NodeView]) -> TooManyRequests:
        if refusal is not None:
            return refusal
        if not views:
            return TooManyRequests("No live node can run the function right now", "ConcurrentInvocationLimitExceeded")
        error_type, message = why_no_room(views, self._want(function))
        return TooManyRequests(message, error_type)

    # NodeApi
    def prepare(self, function: FunctionSpec) -> BackboneInfo:
        """Load the backbone on every live node, in parallel; enough when one node has it (a node
        without room for it is skipped and logged). Raises the first error when none could."""
        members = self._live_members()
        if not members:
            raise NodeError("no live node to load the backbone on")
        with ThreadPoolExecutor(max_workers=len(members), thread_name_prefix="prepare") as pool:
            futures = [(m, pool.submit(self._call, m, lambda h: h.prepare(function))) for m in members]
            results: list[tuple[_Member, BackboneInfo | BaseException]] = []
            for m, fut in futures:
                try:
                    results.append((m, fut.result()))
                except Exception as exc:
                    results.append((m, exc))
        loaded = [info for _m, info in results if isinstance(info, BackboneInfo)]
        for m, err in results:
            if not isinstance(err, BackboneInfo):
                log.warning("node %s did not load %s: %s", m.node_id, function.base_model_path, err)
        if not loaded:
            raise next(e for _m, e in results if isinstance(e, BaseException))
        with self._lock:
            self._backbone_bytes[str(function.base_model_path)] = loaded[0].size_bytes
            self._prepared.setdefault(str(function.base_model_path), function)
        return loaded[0]

    def invoke(self, request: InvocationRequest) -> InvocationResult:
        start_ts = time.time()
        refusal: TooManyRequests | None = None
        candidates, views = self._candidates(request)
        for k, m in enumerate(candidates):
            if k:
                self._begin(m, request)
            result = None
            try:
                result = m.handle.invoke(request)
                return result
            except TooManyRequests as exc:   # full since its summary: the next node
                refusal = exc
            except NodeLost as exc:
                self.mark_lost(m.node_id, exc.why)
                result = lost_result(request, m.node_id, exc.why, start_ts)
                return result
            finally:
                self._end(m, request.request_id, result)
        raise self._no_room(refusal, request.function, views)

    def invoke_stream(self, request: InvocationRequest) -> NodeStream:
        start_ts = time.time()
        refusal: TooManyRequests | None = None
        candidates, views = self._candidates(request)
        for k, m in enumerate(candidates):
            if k:
                self._begin(m, request)
            try:
                inner = m.handle.invoke_stream(request)
            except TooManyRequests as exc:
                self._end(m, request.request_id)
                refusal = exc
                continue
            except NodeLost as exc:
                self.mark_lost(m.node_id, exc.why)
                self._end(m, request.request_id)
                return FinishedStream(lost_result(request, m.node_id, exc.why, start_ts))
            except BaseException:
                self._end(m, request.request_id)
                raise
            return TrackedStream(inner, functools.partial(self._stream_ended, m, request, start_ts))
        raise self._no_room(refusal, request.function, views)

    def _stream_ended(self, member: _Member, request: InvocationRequest, start_ts: float,
                      result: InvocationResult | None, error: BaseException | None) -> InvocationResult | None:
        if result is None and isinstance(error, NodeLost):
            self.mark_lost(member.node_id, error.why)
            result = lost_result(request, member.node_id, error.why, start_ts)
        self._end(member, request.request_id, result)
        return result

    def cancel(self, request_id: str) -> bool:
        with self._lock:
            holder = next((m for m in self._members if request_id in m.inflight and m.lost is None), None)
        if holder is not None:
            try:
                return self._call(holder, lambda h: h.cancel(request_id))
            except NodeLost:
                return False
        return any(self._each(lambda h: h.cancel(request_id)))

    def provision(self, function: FunctionSpec, count: int) -> None:
        """Hold ``count`` instances of the version on one node (see the module's docstring); 0
        releases them there. Raises ``NodeError`` when no live node could take the target."""
        with self._provisioning:
            held = self._targets.get(function)
            holder = next((m for m in self._live_members() if held and m.node_id == held.node_id), None)
            if count == 0:
                self._targets.drop(function)
                if holder is not None:
                    try:
                        self._call(holder, lambda h: h.provision(function, 0))
                    except NodeLost:
                        pass   # its instances went with it
                return
            tried: set[str] = set()
            while True:
                member = holder if holder is not None and holder.node_id not in tried else self._pick(function, tried)
                tried.add(member.node_id)
                try:
                    self._call(member, lambda h: h.provision(function, count))
                except NodeLost:
                    continue
                self._targets.put(function, count, member.node_id)
                return

    def _pick(self, function: FunctionSpec, tried: set[str]) -> _Member:
        """The node for a provisioned target: placement's first choice among those not tried."""
        views = [(m, v) for m, v in self._views() if m.node_id not in tried]
        if not views:
            raise NodeError(f"no live node to hold provisioned concurrency of {function.name}:{function.version}")
        by_id = {m.node_id: m for m, _v in views}
        ranked = rank([v for _m, v in views], self._want(function))
        return by_id[ranked[0].node_id] if ranked else views[0][0]

    def _rehome(self, moving: list[Target]) -> None:
        for old in moving:
            if self._targets.get(old.spec) != old:
                continue   # released or changed meanwhile
            try:
                self.provision(old.spec, old.count)
            except (NodeError, OSError, ValueError) as exc:
                log.warning("provisioned concurrency of %s:%s found no new node: %s", old.spec.name,
                            old.spec.version, exc)

    def retire(self, function_name: str, keep_revision: str | None = None, version: str | None = None) -> int:
        self._targets.retire(function_name, keep_revision, version)
        return sum(self._each(lambda h: h.retire(function_name, keep_revision, version)))

    def describe(self, checksums: bool = False) -> NodeInfo:
        with self._lock:
            members = list(self._members)
        infos: list[NodeInfo] = []
        for m in members:
            if m.lost is None:
                try:
                    m.last_info = replace(self._call(m, lambda h: h.describe(checksums)), host=m.handle.host)
                except NodeLost:
                    pass
            if m.lost is None and m.last_info is not None:
                infos.append(m.last_info)
            else:
                base = m.last_info or NodeInfo(m.node_id, m.handle.device, "", 0, 0, 0, (), (), host=m.handle.host)
                infos.append(replace(base, state="lost", instances=(), backbones=(), gpu=None, max_instances=0,
                                     warm_pool_held=0))
        return aggregate(self.set_id, infos)

    def _slots(self) -> list[tuple[int, _Member]]:
        return [(m.slot, m) for m in self._live_members()]

    def logs(self, function_name: str, max_bytes: int = 64 * 1024, offset: int | None = None,
             since_ts: float | None = None) -> LogChunk:
        slots = self._slots()
        offsets = unpack_offsets(offset, [s for s, _m in slots]) if offset is not None else {}
        chunks: dict[int, LogChunk] = {}
        for slot, m in slots:
            try:
                chunks[slot] = self._call(m, lambda h: h.logs(function_name, max_bytes, offsets.get(slot), since_ts))
            except NodeLost:
                continue
        tail = offset is None and since_ts is None
        return merge(chunks, max_bytes if tail or len(chunks) > 1 else None)

    def write_log(self, function_name: str, source: str, line: str) -> None:
        for m in self._live_members():   # the first live node keeps the control plane's lines
            try:
                self._call(m, lambda h: h.write_log(function_name, source, line))
                return
            except NodeLost:
                continue

    def delete_logs(self, function_name: str) -> None:
        self._each(lambda h: h.delete_logs(function_name))

    def verify(self) -> tuple[IntegrityEvent, ...]:
        return tuple(e for events in self._each(lambda h: h.verify()) for e in events)

    def shutdown(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        for m in self._live_members():
            try:
                m.handle.shutdown()
            except Exception:   # a node that fails to stop must not keep the others running
                log.exception("stopping node %s failed", m.node_id)
