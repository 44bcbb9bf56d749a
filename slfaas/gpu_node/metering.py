"""The node's side of billing: node events become meter calls (billing knows nothing of nodes)."""
from __future__ import annotations

from typing import Any

from slfaas.billing.meter import InvocationFacts, Meter
from slfaas.gpu_node import events as ev


def meter_subscriber(meter: Meter) -> ev.Subscriber:
    """A subscriber for the node's ``EventBus``; it answers ``InvocationEnded`` with the
    invocation's ``UsageRecord``."""

    def on_event(event: ev.NodeEvent) -> Any:
        if isinstance(event, ev.InvocationEnded):
            facts = InvocationFacts(
                request_id=event.request_id, function_name=event.function_name, version=event.version,
                memory_mb=event.memory_mb, instance_id=event.instance_id, cold_start=event.cold_start,
                preloaded=event.preloaded, submitted_ts=event.submitted_ts, dispatch_ts=event.dispatch_ts,
                end_ts=event.ts, error_type=event.error_type, payload=event.payload, metrics=event.metrics,
                batch_size=event.batch_size, runtime_source=event.runtime_source,
                adapter_source=event.adapter_source)
            return meter.invocation_finished(facts, event.init_facts)
        if isinstance(event, ev.InvocationStarted):
            meter.invocation_started(event.request_id, event.instance_id, event.ts)
        elif isinstance(event, ev.InvocationAborted):
            meter.invocation_aborted(event.request_id, event.ts)
        elif isinstance(event, ev.InstanceStarting):
            meter.instance_starting(event.instance_id, event.ts, event.function_name, event.version, event.memory_mb)
        elif isinstance(event, ev.InstanceMeasured):
            meter.instance_measured(event.instance_id, event.device_mb, event.measured)
        elif isinstance(event, ev.InstanceReady):
            meter.instance_ready(event.instance_id, event.ts, event.init_wall_s)
        elif isinstance(event, ev.InstanceIdle):
            meter.instance_idle(event.instance_id, event.function_name, event.ts, event.provisioned)
        elif isinstance(event, ev.InstancePrestarted):
            meter.instance_prestarted(event.instance_id, event.function_name, event.provisioned)
        elif isinstance(event, ev.InstanceGone):
            meter.instance_gone(event.instance_id, event.ts)
        elif isinstance(event, ev.BackbonesChanged):
            meter.backbone_resident(event.count, event.largest_bytes, event.largest_load_s)
        return None

    return on_event
