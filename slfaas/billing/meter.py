"""The node's meter: turns the agent's instance and invocation events into a device timeline,
per-invocation usage records and the node's own usage (flushed every few seconds).

The agent calls it at each event with the event's time; records and node usage go to sinks
(the registry, in the server) so that they survive restarts. Prices are applied here, when an
invocation ends, so each record carries the cost it was billed at.
"""
from __future__ import annotations

import json
import logging
import math
import threading
import time
from dataclasses import dataclass, replace
from typing import Callable, Mapping

from slfaas.billing.ledger import compute_share, init_phases
from slfaas.billing.prices import (PriceSheet, default_prices, device_second_usd, device_type_for,
                                  invocation_cost_usd)
from slfaas.billing.records import InstanceUsage, NodeUsage, UsageRecord
from slfaas.billing.sharing import InstanceActivities
from slfaas.billing.timeline import DeviceTimeline

log = logging.getLogger(__name__)

FLUSH_INTERVAL_S = 2.0
MAX_METRICS_PARSE_BYTES = 1 << 20   # a response body larger than this is not searched for metrics


@dataclass(frozen=True)
class InvocationFacts:
    """What the agent knows when an invocation ends."""

    request_id: str
    function_name: str
    version: str
    memory_mb: int
    instance_id: str
    cold_start: bool
    preloaded: bool             # the instance came from a warm pool of generic runtimes
    submitted_ts: float
    dispatch_ts: float
    end_ts: float
    error_type: str | None
    payload: bytes
    # from the runtime beside the body: device_ms (its share), batch_device_ms (+ a stream's usage)
    metrics: Mapping[str, object] | None
    batch_size: int = 1         # the most invocations in one forward pass with it (the node checked it)
    runtime_source: str = ""    # a cold start's: "prewarmed", "pool" or "cold" ("": from ``preloaded``)
    adapter_source: str = ""    # a cold start's: "gpu", "host" or "disk"


def _usage(payload: bytes, trailer: Mapping[str, object] | None) -> Mapping[str, object]:
    """Token counts, from a stream's trailer or the runtime's result metrics, else a LoRA
    handler's JSON body ("usage"). A buffered response's metrics may carry the prompt length
    alone (for the scheduler), so each count is taken where it is. They are the function's
    own account, shown in reports but never priced."""
    counts = {k: v for k, v in (trailer or {}).items() if k in ("prompt_tokens", "completion_tokens")}
    if len(counts) == 2 or not payload or len(payload) > MAX_METRICS_PARSE_BYTES \
            or not payload.lstrip().startswith(b"{"):
        return counts
    try:
        body = json.loads(payload)
    except (ValueError, RecursionError):
        return counts
    usage = body.get("usage") if isinstance(body, dict) else None
    return {**usage, **counts} if isinstance(usage, dict) else counts


def _num(v: object, default: float = 0.0, high: float = 1e15) -> float:
    """A non-negative finite number no larger than ``high`` (JSON allows 1e999), else ``default``."""
    if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0:
        return float(min(v, high))
    return default


class Meter:
    def __init__(self, node_id: str, device: str, sheet: PriceSheet | None = None, gpu_name: str | None = None,
                 on_usage: Callable[[UsageRecord], None] | None = None,
                 on_node_usage: Callable[[NodeUsage], None] | None = None,
                 clock: Callable[[], float] = time.time,
                 on_instance_usage: Callable[[InstanceUsage], None] | None = None):
        self.node_id = node_id
        self.device = device
        self.device_type = device_type_for(device, gpu_name)
        self.sheet = sheet or default_prices()
        # an unpriced device fails the node's start with the key to add, not an invocation later
        device_second_usd(self.sheet, self.device_type, 2048)
        self.on_usage = on_usage
        self.on_node_usage = on_node_usage
        self.on_instance_usage = on_instance_usage
        self._clock = clock
        self.start_ts = clock()
        self.timeline = DeviceTimeline(self.start_ts)
        self.activities = InstanceActivities(self.timeline)
        self._lock = threading.Lock()
        self._init_accrued: dict[str, float] = {}   # instance → init share not billed yet
        self._init_wall: dict[str, float] = {}
        self._lives: dict[str, InstanceUsage] = {}   # instances alive now
        self._billed_s = 0.0
        self._runtime_overhead_s = 0.0
        self._prestart_init: dict[str, float] = {}   # provisioned instances' init, by function (billed)
        self._prewarm_init_s = 0.0                   # keep-alive pre-warms' init (pre-loading overhead)
        self._backbone_bytes = 0
        self._backbone_load_s = 0.0
        self._closed = threading.Event()
        self._flusher: threading.Thread | None = None

    # lifecycle
    def start_flushing(self, interval_s: float = FLUSH_INTERVAL_S,
                       probe: Callable[[], tuple[int, int]] | None = None) -> None:
        """Flush node usage every ``interval_s``; ``probe`` returns (resident backbones,
        warm-pool runtimes) so idle time is put in the right overhead category."""
        def loop() -> None:
            while not self._closed.wait(interval_s):
                try:
                    if probe is not None:
                        backbones, pool = probe()
                        now = self._clock()
                        self.timeline.set_backbones(backbones, now)
                        self.timeline.set_pool_size(pool, now)
                    self.flush()
                except Exception:
                    log.exception("metering flush failed")
        self._flusher = threading.Thread(target=loop, daemon=True, name="billing-meter")
        self._flusher.start()

    def close(self) -> None:
        self._closed.set()
        self.flush()

    def backbone_resident(self, count: int, size_bytes: int, load_s: float) -> None:
        self.timeline.set_backbones(count, self._clock())
        with self._lock:
            if size_bytes > self._backbone_bytes:
                self._backbone_bytes, self._backbone_load_s = size_bytes, load_s

    # instances
    def instance_starting(self, instance_id: str, ts: float, function_name: str = "", version: str = "",
                          memory_mb: int = 0) -> None:
        self.timeline.start_activity(f"init:{instance_id}", "init", ts)
        with self._lock:
            self._lives[instance_id] = InstanceUsage(instance_id, function_name, version, self.node_id, self.device,
                                                     self.device_type, memory_mb, ts)

    def instance_measured(self, instance_id: str, device_mb: float, measured: bool) -> None:
        """The device memory an instance holds (the node's measure, or its estimate)."""
        self._update_life(instance_id, device_mb=_num(device_mb), device_mb_measured=measured)

    def _update_life(self, instance_id: str, **changes: object) -> None:
        with self._lock:
            life = self._lives.get(instance_id)
            if life is not None:
                self._lives[instance_id] = replace(life, **changes)  # type: ignore[arg-type]

    def live_instances(self) -> list[InstanceUsage]:
        """Instances alive now (``end_ts`` None), oldest first."""
        with self._lock:
            return sorted(self._lives.values(), key=lambda i: (i.start_ts, i.instance_id))

    def instance_ready(self, instance_id: str, ts: float, init_wall_s: float | None = None) -> None:
        """Init ended (ready, failed or abandoned): its share waits for the invocation it serves."""
        with self._lock:
            life = self._lives.get(instance_id)
            if life is not None and life.ready_ts is None and init_wall_s is not None:
                self._lives[instance_id] = replace(life, ready_ts=ts)
        accrued = self.timeline.end_activity_if_active(f"init:{instance_id}", ts)
        if accrued is None:
            return
        with self._lock:
            self._init_accrued[instance_id] = self._init_accrued.get(instance_id, 0.0) + accrued
            if init_wall_s is not None:
                self._init_wall[instance_id] = init_wall_s

    def instance_idle(self, instance_id: str, function_name: str, ts: float, provisioned: bool = False) -> None:
        self.timeline.instance_idle(instance_id, function_name, ts, provisioned)

    def instance_prestarted(self, instance_id: str, function_name: str, provisioned: bool) -> None:
        """An instance started ahead of requests ended its init (after ``instance_ready``): no
        invocation is billed it. A provisioned instance's goes to its function as provisioned
        time; a pre-warm's is the platform's pre-loading overhead."""
        with self._lock:
            init_s = self._init_accrued.pop(instance_id, 0.0)
            self._init_wall.pop(instance_id, None)
            if provisioned:
                self._prestart_init[function_name] = self._prestart_init.get(function_name, 0.0) + init_s
            else:
                self._prewarm_init_s += init_s

    def instance_gone(self, instance_id: str, ts: float) -> None:
        # An init's share stays pending: the invocation that caused the cold start is billed it
        # when it ends, even when the instance died (every cold start serves one invocation).
        self.instance_ready(instance_id, ts)
        self.timeline.instance_busy(instance_id, ts)
        with self._lock:
            life = self._lives.pop(instance_id, None)
        if life is not None and self.on_instance_usage is not None:
            try:
                self.on_instance_usage(replace(life, end_ts=max(ts, life.start_ts)))
            except Exception:
                log.exception("storing instance usage %s failed", instance_id)

    # invocations
    def invocation_started(self, request_id: str, instance_id: str, ts: float) -> None:
        self.timeline.instance_busy(instance_id, ts)
        self.activities.start(request_id, instance_id, ts)
        with self._lock:
            life = self._lives.get(instance_id)
            if life is not None:
                self._lives[instance_id] = replace(life, invocations=life.invocations + 1)

    def invocation_aborted(self, request_id: str, ts: float) -> None:
        """The invocation ended without ``invocation_finished`` (an exception in the node): its
        share so far is platform overhead, and the device is not shared with it any more."""
        released = self.activities.abort(request_id, ts)
        if released:
            with self._lock:
                self._runtime_overhead_s += released

    def invocation_finished(self, facts: InvocationFacts, init_facts: Mapping[str, object]) -> UsageRecord:
        usage = _usage(facts.payload, facts.metrics)
        wall_s = max(0.0, facts.end_ts - facts.dispatch_ts)
        # Device time as the runtime measured it beside the response (CUDA events; wall on CPU):
        # its token share of the forward passes it was in, never more than the wall time; none
        # reported (an error, a handler that bypassed the engine) bills its even share of its
        # instance's time, as Lambda bills duration.
        metrics = facts.metrics or {}
        device_ms = _num(metrics.get("device_ms"), -1.0)
        measured = device_ms >= 0 and facts.error_type is None
        device_s = min(device_ms / 1000, wall_s) if measured else None
        settled = self.activities.finish(facts.request_id, facts.end_ts,
                                         lambda window_s, even_s: compute_share(device_s, wall_s, window_s, even_s))
        if device_s is None:
            batch_device_s = wall_s
        else:
            batch_device_s = min(max(_num(metrics.get("batch_device_ms"), device_ms) / 1000, device_s), wall_s)
        with self._lock:
            init_s = self._init_accrued.pop(facts.instance_id, 0.0) if facts.cold_start else 0.0
            init_wall = self._init_wall.pop(facts.instance_id, init_s) if facts.cold_start else 0.0
        tier = "warm" if not facts.cold_start else (facts.runtime_source or ("pool" if facts.preloaded else "cold"))
        billed = settled.billed_s + init_s
        cost = invocation_cost_usd(self.sheet, self.device_type, facts.memory_mb, billed)
        rec = UsageRecord(
            request_id=facts.request_id, function_name=facts.function_name, version=facts.version,
            node_id=self.node_id, device=self.device, device_type=self.device_type, start_ts=facts.submitted_ts,
            end_ts=facts.end_ts, status="success" if facts.error_type is None else "function_error",
            cold_start=facts.cold_start, preload_tier=tier, batch_size=max(1, facts.batch_size),
            batch_device_s=batch_device_s,
            compute_device_s=settled.billed_s, init_device_s=init_s,
            runtime_overhead_s=max(0.0, settled.even_s - settled.billed_s), queue_s=max(0.0, facts.dispatch_ts - facts.submitted_ts),
            tokens_in=int(_num(usage.get("prompt_tokens"), high=2**31)),
            tokens_out=int(_num(usage.get("completion_tokens"), high=2**31)),
            memory_mb=facts.memory_mb, cost_usd=cost,
            init_phases_s=init_phases(init_wall, init_facts) if facts.cold_start else {},
            adapter_tier=(facts.adapter_source or "disk") if facts.cold_start else "")
        with self._lock:
            self._billed_s += billed
            self._runtime_overhead_s += settled.released_s   # what its batch accrued and nobody was billed
        if self.on_usage is not None:
            try:
                self.on_usage(rec)
            except Exception:  # the invocation's own record is kept by the caller; never fail it here
                log.exception("storing usage record %s failed", rec.request_id)
        return rec

    # node usage
    def snapshot(self, ts: float | None = None) -> NodeUsage:
        totals = self.timeline.totals(self._clock() if ts is None else ts)
        with self._lock:
            billed, runtime = self._billed_s, self._runtime_overhead_s
            bb_bytes, bb_load = self._backbone_bytes, self._backbone_load_s
            prestart, prewarm = dict(self._prestart_init), self._prewarm_init_s
        accrued = sum(totals.accrued_s.values())
        overhead = dict(totals.overhead_s)
        overhead["runtime"] = runtime
        overhead["preload"] = overhead.get("preload", 0.0) + prewarm
        # shares of work still running, or an init whose invocation has not ended: billed later
        overhead["in_flight"] = max(0.0, accrued - billed - runtime - prewarm - sum(prestart.values()))
        provisioned = dict(totals.provisioned_by_function_s)
        for fn, s in prestart.items():
            provisioned[fn] = provisioned.get(fn, 0.0) + s
        return NodeUsage(self.node_id, self.device, self.device_type, totals.start_ts, totals.now_ts,
                         totals.elapsed_s, billed, overhead, dict(totals.keep_alive_by_function_s),
                         bb_bytes, bb_load, provisioned, dict(totals.idle_instance_by_function_s))

    def flush(self) -> NodeUsage:
        snap = self.snapshot()
        if self.on_node_usage is not None:
            try:
                self.on_node_usage(snap)
            except Exception:
                log.exception("storing node usage failed")
        return snap
