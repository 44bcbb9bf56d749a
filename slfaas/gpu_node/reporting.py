"""What an invocation leaves behind: Lambda's START/END/REPORT lines in the function's log, and
the ``InvocationResult`` the control plane receives."""
from __future__ import annotations

import json
import time

from slfaas.billing.records import UsageRecord
from slfaas.gpu_node.lifecycle.instance import Instance, Outcome
from slfaas.gpu_node.logs import FunctionLogs
from slfaas.gpu_node.types import InvocationRequest, InvocationResult


class Reporter:
    def __init__(self, logs: FunctionLogs):
        self.logs = logs

    def start(self, request: InvocationRequest, inst: Instance) -> None:
        self.logs.append(request.function.name, inst.instance_id,
                         f"START RequestId: {request.request_id} Version: {request.function.version}")

    def end(self, request: InvocationRequest, inst: Instance, outcome: Outcome, cold: bool, dispatch_ts: float,
            usage: UsageRecord | None = None) -> None:
        name = request.function.name
        duration_ms = (time.time() - dispatch_ts) * 1000
        if outcome.error_type is not None:
            try:
                message = json.loads(outcome.payload).get("errorMessage", "")
            except (ValueError, AttributeError):
                message = ""
            self.logs.append(name, inst.instance_id,
                             f"ERROR RequestId: {request.request_id} {outcome.error_type}: {message}")
        self.logs.append(name, inst.instance_id, f"END RequestId: {request.request_id}")
        init = f"\tInit Duration: {inst.init_duration_ms:.2f} ms" if cold and inst.init_duration_ms else ""
        self.logs.append(name, inst.instance_id,
                         f"REPORT RequestId: {request.request_id}\tDuration: {duration_ms:.2f} ms\t"
                         f"Billed Duration: {int(duration_ms) + 1} ms\tMemory Size: {request.function.memory_mb} MB\t"
                         f"Max Memory Used: {_max_rss_mb(inst)} MB{init}{billing_fields(usage)}")

    @staticmethod
    def result(request: InvocationRequest, inst: Instance, outcome: Outcome, cold: bool, submitted_ts: float,
               dispatch_ts: float, usage: UsageRecord | None = None) -> InvocationResult:
        end_ts = time.time()
        queue_ms = ((outcome.delivered_ts or dispatch_ts) - dispatch_ts) * 1000
        return InvocationResult(
            request_id=request.request_id, payload=outcome.payload,
            function_error=None if outcome.error_type is None else "Unhandled",
            error_type=outcome.error_type or "", instance_id=inst.instance_id, cold_start=cold,
            start_ts=submitted_ts, end_ts=end_ts,
            init_duration_ms=inst.init_duration_ms if cold else None,
            queue_ms=queue_ms, duration_ms=(end_ts - dispatch_ts) * 1000, metrics=outcome.metrics, usage=usage)


def billing_fields(usage: UsageRecord | None) -> str:
    """slfaas's additions to Lambda's REPORT line: what billing charged this invocation."""
    if usage is None:
        return ""
    unit = "GPU" if usage.device.startswith("cuda") else "Device"
    adapter = f"\tAdapter Tier: {usage.adapter_tier}" if usage.adapter_tier else ""
    return (f"\tBilled {unit} Seconds: {usage.billed_device_s:.6f}\tBatch Size: {usage.batch_size}\t"
            f"Preload Tier: {usage.preload_tier}{adapter}\tCost: ${usage.cost_usd:.10f}")


def _max_rss_mb(inst: Instance) -> int:
    pid = inst.sandbox.pid if inst.sandbox else None
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) // 1024
    except (OSError, ValueError, TypeError):
        pass
    return 0
