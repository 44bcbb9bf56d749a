"""GET /slfaas/v1/invocations/ID for an Event invocation: the record and the event's status come
from two rows, written by the attempt in one order (the record, then the event's status) and read
here in the other, so a final status always comes with the record of the attempt that ended."""
from __future__ import annotations

import time

from slfaas.faas.api import create_app
from slfaas.faas.registry import InvocationRecord
from slfaas.faas.registry_settings import EventRecord


def test_a_final_event_status_comes_with_the_finished_record(svc, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    now = time.time()
    running = InvocationRecord(request_id="r1", function_name="fn", version="$LATEST", status="running",
                               start_ts=now)   # a retry under way: the last attempt's record, no instance yet
    svc.registry.record_invocation(running)
    svc.registry.insert_event(EventRecord(
        request_id="r1", function_name="fn", version="$LATEST", invoked_arn="arn", payload=b"{}",
        client_context=None, status="running", attempts=2, throttles=0, enqueued_ts=now, next_attempt_ts=now))
    details = svc.events.details

    def attempt_ends_during_the_read(request_id: str):  # type: ignore[no-untyped-def]
        # the worker finishes the attempt between the endpoint's two reads, in its own order
        svc.registry.finish_invocation(running, status="success", instance_id="inst-b", end_ts=time.time())
        svc.registry.update_event("r1", status="success")
        return details(request_id)
    monkeypatch.setattr(svc.events, "details", attempt_ends_during_the_read)

    body = create_app(svc).test_client().get("/slfaas/v1/invocations/r1").get_json()
    assert body["event"]["Status"] == "success"
    assert body["status"] == "success" and body["instance_id"] == "inst-b"


def test_an_unknown_request_is_404(svc) -> None:  # type: ignore[no-untyped-def]
    resp = create_app(svc).test_client().get("/slfaas/v1/invocations/nope")
    assert resp.status_code == 404
