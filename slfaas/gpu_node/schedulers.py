"""The scheduler a node's settings ask for (``--scheduler``): first come first served, or the
SLO-aware batching scheduler with its latency model for the node's device."""
from __future__ import annotations

from slfaas.gpu_node.config import NodeConfig
from slfaas.gpu_node.policy.latency import LatencyModel
from slfaas.gpu_node.policy.scheduling import FcfsScheduler, Scheduler
from slfaas.gpu_node.policy.slo_scheduler import SloConfig, SloScheduler


def make_scheduler(config: NodeConfig) -> Scheduler:
    if config.scheduler == "fcfs":
        return FcfsScheduler()
    return SloScheduler(SloConfig(default_slo_ms=config.ttft_slo_ms, max_queue_per_function=config.max_queue_per_function,
                                  max_queue_s=config.max_queue_s,
                                  max_running_batches=config.max_running_batches or config.max_instances),
                        LatencyModel(config.device))


QUEUE_GRACE_S = 10.0


def submit_timeout_s(config: NodeConfig) -> float:
    """How long a caller waits for its request's placement at most: a safety net past the
    scheduler's own queue-time bound (which answers first, with its Retry-After)."""
    return config.max_queue_s + QUEUE_GRACE_S
