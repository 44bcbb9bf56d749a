"""The node's Prometheus metrics from events, usage records and a node read at scrape time
(plain values, no server); the live scrape is tests/integration/test_metrics.py."""
from __future__ import annotations

from decimal import Decimal

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from slfaas.billing.records import UsageRecord
from slfaas.gpu_node import events as ev
from slfaas.gpu_node.metrics import NodeMetrics
from slfaas.gpu_node.types import BackboneInfo, GpuMemory, InstanceInfo, NodeInfo


def _ended(rid: str, fn: str, batch: int, metrics: dict | None, cold: bool = False, preloaded: bool = False,
           error: str | None = None) -> ev.InvocationEnded:
    return ev.InvocationEnded(110.0, rid, fn, "$LATEST", 2048, "i-1", cold, preloaded, submitted_ts=100.0,
                              dispatch_ts=104.0, error_type=error, payload=b"{}", metrics=metrics, init_facts={},
                              batch_size=batch, delivered_ts=105.0)


def _samples(m: NodeMetrics) -> dict[tuple, float]:
    out = {}
    for fam in text_string_to_metric_families(generate_latest(m.registry).decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_events_and_usage_become_per_function_series() -> None:
    m = NodeMetrics()
    m.on_event(_ended("a", "f", 3, {"ttft_ms": 500.0}, cold=True))
    m.on_event(_ended("b", "f", 1, {"ttft_ms": "soon"}, cold=True, preloaded=True))   # odd metrics: no TTFT
    m.on_event(_ended("c", "g", 1, None, error="Runtime.ExitError"))
    m.on_event(ev.InstanceIdle(1.0, "i-1", "f"))                                       # ignored
    m.on_usage(UsageRecord("a", "f", "$LATEST", "n", "cpu", "cpu", 100.0, 110.0, "success", True, "cold", 3,
                           0.6, 0.2, 4.0, 0.0, 0.0, 5, 5, 2048, Decimal("0.001")))
    s = _samples(m)
    assert s[("slfaas_invocations_total", (("function", "f"), ("status", "success")))] == 2
    assert s[("slfaas_invocations_total", (("function", "g"), ("status", "error")))] == 1
    assert s[("slfaas_batch_size_sum", (("function", "f"),))] == 4
    assert s[("slfaas_batch_size_bucket", (("function", "f"), ("le", "2.0")))] == 1
    # TTFT: 5 s from reaching the node to delivery (the cold start), then 0.5 s to the first token
    assert s[("slfaas_ttft_seconds_count", (("function", "f"),))] == 1
    assert s[("slfaas_ttft_seconds_sum", (("function", "f"),))] == pytest.approx(5.5)
    assert s[("slfaas_e2e_seconds_sum", (("function", "f"),))] == pytest.approx(20.0)
    assert s[("slfaas_cold_starts_total", (("function", "f"), ("source", "fresh")))] == 1
    assert s[("slfaas_cold_starts_total", (("function", "f"), ("source", "pool")))] == 1
    assert s[("slfaas_device_seconds_total", (("function", "f"), ("kind", "compute")))] == pytest.approx(0.2)
    assert s[("slfaas_device_seconds_total", (("function", "f"), ("kind", "init")))] == pytest.approx(4.0)
    assert s[("slfaas_cost_usd_total", (("function", "f"),))] == pytest.approx(0.001)


def test_state_is_read_at_scrape_time_and_a_failing_read_fails_no_scrape() -> None:
    m = NodeMetrics()
    infos = (InstanceInfo("i-1", "f", "$LATEST", "r", "BUSY", 7, 0.0, 0.0, 2, adapter_bytes=1000),
             InstanceInfo("i-2", "f", "$LATEST", "r", "IDLE", 8, 0.0, 0.0, 1, adapter_bytes=1000),
             InstanceInfo("i-3", "g", "$LATEST", "r", "STOPPED", None, 0.0, 0.0, 1, adapter_bytes=500))
    gpu = GpuMemory("cuda:0", "H200", 1000, 600, 400, 100, 2.0, {"i-1": 50, "i-2": 70})
    backbone = BackboneInfo("/m", "cuda:0", 100 << 20, 3, 1.0, 0.1, 0.0)
    state = {"broken": False}

    def describe() -> NodeInfo:
        if state["broken"]:
            raise RuntimeError("shutting down")
        return NodeInfo("n", "cuda:0", "process", 8, 2, 1, (backbone,), infos, gpu)
    m.watch(describe, lambda: {"f": 3})
    s = _samples(m)
    assert s[("slfaas_instances", (("function", "f"), ("state", "BUSY")))] == 1
    assert s[("slfaas_instances", (("function", "g"), ("state", "STOPPED")))] == 1
    assert s[("slfaas_queue_length", (("function", "f"),))] == 3 and s[("slfaas_queue_length", (("function", "g"),))] == 0
    assert s[("slfaas_adapter_bytes", (("function", "f"),))] == 2000 and ("slfaas_adapter_bytes", (("function", "g"),)) not in s
    mem = {k[1][1][1]: v for k, v in s.items() if k[0] == "slfaas_memory_bytes"}
    assert mem == {"backbone": 100 << 20, "adapters": 2 << 20, "used": 600 << 20, "free": 400 << 20,
                   "total": 1000 << 20, "instances": 120 << 20}
    assert s[("slfaas_instance_memory_bytes", (("function", "f"),))] == 120 << 20
    assert s[("slfaas_warm_pool_runtimes", ())] == 1
    state["broken"] = True
    assert not any(k[0] == "slfaas_instances" for k in _samples(m))   # the rest still renders


def test_several_nodes_scrape_as_one_with_a_node_label() -> None:
    """The server's /metrics over two nodes' registries: one family each, every sample
    labelled with its node (the same function may run on both); one node stays unlabelled."""
    from prometheus_client import CollectorRegistry

    from slfaas.faas.metrics import ControlPlaneMetrics, NodesCollector

    a, b = NodeMetrics(), NodeMetrics()
    a.on_event(_ended("r1", "f", 1, None))
    b.on_event(_ended("r2", "f", 1, None))
    b.on_event(_ended("r3", "f", 1, None))
    registry = CollectorRegistry(auto_describe=True)
    registry.register(NodesCollector([("n-a", a.registry), ("n-b", b.registry)]))
    plane = ControlPlaneMetrics(registry)
    plane.throttled("f", "ConcurrentInvocationLimitExceeded")
    text = plane.render().decode()
    families = [f.name for f in text_string_to_metric_families(text)]
    assert families.count("slfaas_invocations") == 1 and "slfaas_throttles" in families
    got = {tuple(sorted(s.labels.items())): s.value for f in text_string_to_metric_families(text)
           if f.name == "slfaas_invocations" for s in f.samples if s.name == "slfaas_invocations_total"}
    assert got == {(("function", "f"), ("node", "n-a"), ("status", "success")): 1,
                   (("function", "f"), ("node", "n-b"), ("status", "success")): 2}
    single = CollectorRegistry(auto_describe=True)
    single.register(NodesCollector([("n-a", a.registry)]))
    assert all("node" not in s.labels for f in single.collect() for s in f.samples)
