"""Prometheus metrics of a node, labelled per function: what happened, counted from the node's
events (``NodeMetrics.on_event``) and billing's usage records (``on_usage``); what is, read
from the node when scraped (instances by state, queue lengths, memory).

The metrics live in their own ``CollectorRegistry`` (several nodes in one process, as tests
run them, never collide); the control plane adds its counters to the same registry and
serves it at ``/metrics``.
"""
from __future__ import annotations

import logging
from collections import Counter as Tally
from typing import Callable, Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from slfaas.billing.records import UsageRecord
from slfaas.gpu_node import events as ev
from slfaas.gpu_node.types import NodeInfo

log = logging.getLogger(__name__)

LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
INSTANCE_STATES = ("STARTING", "IDLE", "BUSY", "STOPPING", "STOPPED", "FAILED")
MB = 1 << 20


def _number(metrics: Mapping[str, object] | None, key: str) -> float | None:
    value = (metrics or {}).get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1e12:
        return None
    return float(value)


class NodeMetrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.invocations = Counter("slfaas_invocations", "Invocations that ended on the node",
                                   ["function", "status"], registry=r)
        self.batch_size = Histogram("slfaas_batch_size", "Largest batch (invocations in one forward pass) each "
                                    "invocation ran in", ["function"], buckets=BATCH_BUCKETS, registry=r)
        self.ttft = Histogram("slfaas_ttft_seconds", "Time to first token: from reaching the node to the "
                              "runtime's first token (queue and cold start included)", ["function"],
                              buckets=LATENCY_BUCKETS_S, registry=r)
        self.e2e = Histogram("slfaas_e2e_seconds", "From reaching the node to the end of the invocation",
                             ["function"], buckets=LATENCY_BUCKETS_S, registry=r)
        self.cold_starts = Counter("slfaas_cold_starts", "Invocations that started an instance, by where its "
                                   "runtime came from (fresh process, or pre-started in the warm pool)",
                                   ["function", "source"], registry=r)
        self.device_seconds = Counter("slfaas_device_seconds", "Billed device seconds (compute: the batch "
                                      "shares; init: the cold starts)", ["function", "kind"], registry=r)
        self.cost = Counter("slfaas_cost_usd", "Billed cost in US dollars", ["function"], registry=r)

    # what happened
    def on_event(self, event: ev.NodeEvent) -> None:
        """An ``EventBus`` subscriber (answers nothing)."""
        if not isinstance(event, ev.InvocationEnded):
            return
        fn = event.function_name
        self.invocations.labels(fn, "success" if event.error_type is None else "error").inc()
        self.batch_size.labels(fn).observe(event.batch_size)
        self.e2e.labels(fn).observe(max(0.0, event.ts - event.submitted_ts))
        first_token_ms = _number(event.metrics, "ttft_ms")
        if first_token_ms is not None and event.delivered_ts is not None and event.error_type is None:
            self.ttft.labels(fn).observe(max(0.0, event.delivered_ts - event.submitted_ts) + first_token_ms / 1000)
        if event.cold_start:
            self.cold_starts.labels(fn, "pool" if event.preloaded else "fresh").inc()

    def on_usage(self, rec: UsageRecord) -> None:
        """Billing's record of an invocation (what it was charged)."""
        self.device_seconds.labels(rec.function_name, "compute").inc(rec.compute_device_s)
        if rec.init_device_s:
            self.device_seconds.labels(rec.function_name, "init").inc(rec.init_device_s)
        self.cost.labels(rec.function_name).inc(float(rec.cost_usd))

    # what is
    def watch(self, describe: Callable[[], NodeInfo], queued: Callable[[], Mapping[str, int]]) -> None:
        """Read the node's state at each scrape: ``describe`` (instances, backbones, GPU
        memory) and ``queued`` (requests waiting per function)."""
        self.registry.register(_NodeState(describe, queued))


class _NodeState(Collector):
    def __init__(self, describe: Callable[[], NodeInfo], queued: Callable[[], Mapping[str, int]]):
        self._describe = describe
        self._queued = queued

    def describe(self) -> Iterable[Metric]:
        return []   # unchecked: the names are fixed below, and describing would call the node

    def collect(self) -> Iterable[Metric]:
        try:
            info = self._describe()
            queued = dict(self._queued())
        except Exception:   # a scrape must not fail because the node is shutting down
            log.exception("reading the node for /metrics failed")
            return
        instances = GaugeMetricFamily("slfaas_instances", "Instances on the node by state",
                                      labels=["function", "state"])
        by_state = Tally((i.function_name, i.state) for i in info.instances)
        for fn in sorted({i.function_name for i in info.instances}):
            for state in INSTANCE_STATES:
                instances.add_metric([fn, state], by_state.get((fn, state), 0))
        yield instances
        queue = GaugeMetricFamily("slfaas_queue_length", "Invocations waiting on the node: for placement, or "
                                  "handed to an instance whose runtime has not taken them yet", labels=["function"])
        for fn in sorted(set(queued) | {i.function_name for i in info.instances}):
            queue.add_metric([fn], queued.get(fn, 0))
        yield queue
        pool = GaugeMetricFamily("slfaas_warm_pool_runtimes", "Generic runtimes pre-started in the warm pool")
        pool.add_metric([], info.warm_pool_held)
        yield pool
        adapters = GaugeMetricFamily("slfaas_adapter_bytes", "Adapter weights held by the function's live "
                                     "instances, as loaded on their device", labels=["function"])
        held: Tally[str] = Tally()
        for i in info.instances:
            if i.alive and i.adapter_bytes:
                held[i.function_name] += i.adapter_bytes
        for fn, n in sorted(held.items()):
            adapters.add_metric([fn], n)
        yield adapters
        yield from self._memory(info)

    def _memory(self, info: NodeInfo) -> Iterable[Metric]:
        memory = GaugeMetricFamily("slfaas_memory_bytes", "Device memory by kind: backbone (the shared weights), "
                                   "adapters and instances (measured per process, CUDA with NVML), used, free, total",
                                   labels=["device", "kind"])
        memory.add_metric([info.device, "backbone"], sum(b.size_bytes for b in info.backbones))
        gpu = info.gpu
        if gpu is not None:
            memory.add_metric([info.device, "adapters"], gpu.adapters_mb * MB)
            for kind, mb in (("used", gpu.used_mb), ("free", gpu.free_mb), ("total", gpu.total_mb)):
                memory.add_metric([info.device, kind], mb * MB)
            if gpu.instances is not None:
                memory.add_metric([info.device, "instances"], sum(gpu.instances.values()) * MB)
        yield memory
        if gpu is not None and gpu.instances is not None:
            per_fn = GaugeMetricFamily("slfaas_instance_memory_bytes", "Device memory of the function's "
                                       "instances (context, adapter, KV cache; NVML)", labels=["function"])
            names = {i.instance_id: i.function_name for i in info.instances}
            sums: Tally[str] = Tally()
            for iid, mb in gpu.instances.items():
                sums[names.get(iid, "?")] += mb * MB
            for fn, n in sorted(sums.items()):
                per_fn.add_metric([fn], n)
            yield per_fn
