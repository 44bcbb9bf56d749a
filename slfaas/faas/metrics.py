"""The control plane's Prometheus counters, beside the node's in one registry (``/metrics``)."""
from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest

CONTENT_TYPE = CONTENT_TYPE_LATEST


class ControlPlaneMetrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        """``registry``: the node's (``BuiltNode.metrics.registry``), so one scrape reads both."""
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self.throttles = Counter("slfaas_throttles", "Invocations refused with TooManyRequestsException, by "
                                 "reason (reserved or account concurrency, node capacity, budget)",
                                 ["function", "reason"], registry=self.registry)

    def throttled(self, function_name: str, reason: str) -> None:
        self.throttles.labels(function_name, reason).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
