"""The control plane's Prometheus counters, beside the nodes' in one registry (``/metrics``)."""
from __future__ import annotations

from typing import Iterable, Sequence

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

CONTENT_TYPE = CONTENT_TYPE_LATEST


class ControlPlaneMetrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        """``registry``: the one ``/metrics`` serves (``NodesCollector`` adds the nodes' to it)."""
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self.throttles = Counter("slfaas_throttles", "Invocations refused with TooManyRequestsException, by "
                                 "reason (reserved or account concurrency, node capacity, budget)",
                                 ["function", "reason"], registry=self.registry)

    def throttled(self, function_name: str, reason: str) -> None:
        self.throttles.labels(function_name, reason).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class NodesCollector(Collector):
    """Several nodes' registries as one: each family once, every sample labelled with its
    ``node`` (the same function may run on two nodes). A single node's samples stay as they are."""

    def __init__(self, registries: Sequence[tuple[str, CollectorRegistry]]):
        self._registries = list(registries)

    def describe(self) -> Iterable[Metric]:
        return []   # collected lazily at each scrape

    def collect(self) -> Iterable[Metric]:
        if len(self._registries) == 1:
            yield from self._registries[0][1].collect()
            return
        merged: dict[str, Metric] = {}
        for node_id, registry in self._registries:
            for family in registry.collect():
                out = merged.get(family.name)
                if out is None:
                    out = merged[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
                for sample in family.samples:
                    out.samples.append(sample._replace(labels={**sample.labels, "node": node_id}))
        yield from merged.values()
