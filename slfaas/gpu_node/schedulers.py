"""The dispatcher a node's settings ask for: its scheduler (``--scheduler``: first come first
served, or SLO-aware batching with a latency model for the node's device), the shared runtime
spec for functions in shared execution, and how long a caller waits for a placement."""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from slfaas.gpu_node.config import NodeConfig
from slfaas.gpu_node.dispatch import Dispatcher
from slfaas.gpu_node.lifecycle.instance import Instance
from slfaas.gpu_node.lifecycle.shared_runtime import shared_spec_factory
from slfaas.gpu_node.lifecycle.table import InstanceTable
from slfaas.gpu_node.policy.latency import LatencyModel
from slfaas.gpu_node.policy.scheduling import FcfsScheduler, Scheduler
from slfaas.gpu_node.policy.slo_scheduler import SloConfig, SloScheduler
from slfaas.gpu_node.resources.memory import MemoryLedger
from slfaas.runtime_contract import MAX_BATCH_SIZE_LIMIT

if TYPE_CHECKING:
    from slfaas.gpu_node.preloader import Preloader

QUEUE_GRACE_S = 10.0


def make_scheduler(config: NodeConfig) -> Scheduler:
    if config.scheduler == "fcfs":
        return FcfsScheduler()
    return SloScheduler(SloConfig(default_slo_ms=config.ttft_slo_ms, max_queue_per_function=config.max_queue_per_function,
                                  max_queue_s=config.max_queue_s,
                                  max_running_batches=config.max_running_batches or config.max_instances),
                        LatencyModel(config.device))


def submit_timeout_s(config: NodeConfig) -> float:
    """How long a caller waits for its request's placement at most: a safety net past the
    scheduler's own queue-time bound (which answers first, with its Retry-After)."""
    return config.max_queue_s + QUEUE_GRACE_S


def concurrency_limit(config: NodeConfig) -> int | None:
    """Invocations the node holds at once: FCFS, one per instance; the SLO scheduler queues and
    batches, so as many as its instances' batches can hold (its queues answer 429 beyond)."""
    return None if config.scheduler == "fcfs" else config.max_instances * MAX_BATCH_SIZE_LIMIT


def build_dispatcher(config: NodeConfig, scheduler: Scheduler | None, table: InstanceTable,
                     stop: Callable[[Instance], None], ledger: MemoryLedger,
                     preloader: Callable[[], "Preloader | None"]) -> Dispatcher:
    """``preloader``: the node's, once the builder made one (arrival rates for offloading)."""
    def value(inst: Instance) -> tuple[float | None, float]:   # what offloading weighs
        f, planner = inst.function, preloader()
        return ledger.measured(inst.instance_id), planner.rate_per_s(f.name, f.version) if planner else 0.0
    return Dispatcher(scheduler or make_scheduler(config), table, config.max_instances, stop, ledger.gpu_view,
                      shared_spec=shared_spec_factory(config), max_wait_s=submit_timeout_s(config), value=value)
