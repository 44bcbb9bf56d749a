"""The API-wide bound on invocations in flight (429 at once beyond it, never a queue) and the
cancellation of an invocation whose caller went away, on FunctionService with a fake node."""
from __future__ import annotations

import threading
import time

import pytest

from slfaas.errors import TooManyRequests
from slfaas.faas.admission import DisconnectWatch, InvocationSlots
from slfaas.faas.registry import Registry
from slfaas.faas.service import CANCELLED_MESSAGE, FunctionService
from tests.gpu_node.fakes import wait_until

ROLE = "arn:aws:iam::000000000000:role/r"


@pytest.fixture
def bounded(tmp_path, node):  # type: ignore[no-untyped-def]
    registry = Registry(f"sqlite:///{tmp_path / 'registry.db'}")
    service = FunctionService(registry, node, tmp_path / "code", max_concurrent_invocations=3)  # type: ignore[arg-type]
    yield service
    node.hold(False)
    service.events.queue.close()
    registry.close()


def _active(svc: FunctionService, zips: dict[str, str], name: str = "fn") -> None:
    svc.create_function({"FunctionName": name, "Runtime": "slfaas-lora", "Role": ROLE, "Code": {"ZipFile": zips["a"]}})
    assert wait_until(lambda: svc.get_function(name).state == "Active", timeout_s=5)


def test_slots_refuse_beyond_the_bound_and_free_on_exit() -> None:
    slots = InvocationSlots(2)
    with slots.slot(), slots.slot():
        with pytest.raises(TooManyRequests) as exc_info:
            slots.acquire()
        assert exc_info.value.reason == "ConcurrentInvocationLimitExceeded"
        assert slots.in_flight == 2
    assert slots.in_flight == 0
    with pytest.raises(RuntimeError):
        with slots.slot():
            raise RuntimeError("the invocation failed")
    assert slots.in_flight == 0
    with pytest.raises(ValueError):
        InvocationSlots(0)


def test_invocations_beyond_the_bound_get_429_at_once(bounded, node, zips) -> None:  # type: ignore[no-untyped-def]
    _active(bounded, zips)
    node.hold()
    results: list[object] = []
    threads = [threading.Thread(target=lambda: results.append(bounded.invoke("fn", None, b"{}"))) for _ in range(3)]
    for t in threads:
        t.start()
    assert node.wait_running(3)
    t0 = time.monotonic()
    with pytest.raises(TooManyRequests, match="--max-concurrent-invocations"):
        bounded.invoke("fn", None, b"{}")
    assert time.monotonic() - t0 < 5                          # refused, not queued behind the three
    assert bounded.invoke("fn", None, b"{}", "Event").status_code == 202   # queued by the event invoker
    node.hold(False)
    for t in threads:
        t.join(10)
    assert len(results) == 3 and bounded.slots.in_flight == 0
    assert bounded.invoke("fn", None, b"{}").status_code == 200


def test_a_disconnected_callers_invocation_is_cancelled_and_recorded(svc, node, zips) -> None:  # type: ignore[no-untyped-def]
    _active(svc, zips)
    node.hold()
    gone = threading.Event()
    outcomes: list[object] = []
    t = threading.Thread(target=lambda: outcomes.append(svc.invoke("fn", None, b"{}", client_gone=gone.is_set)))
    t.start()
    assert node.wait_running(1)
    gone.set()
    t.join(10)
    assert not t.is_alive()
    [rid] = node.cancelled
    record = svc.registry.get_invocation(rid)
    assert record.status == "cancelled" and record.error_message.startswith(CANCELLED_MESSAGE)
    # a caller still connected is not cancelled
    node.hold(False)
    out = svc.invoke("fn", None, b"{}", client_gone=lambda: False)
    assert svc.registry.get_invocation(out.request_id).status == "success"
    assert node.cancelled == [rid]


def test_disconnect_watch_retries_until_the_node_knows_the_request() -> None:
    calls: list[str] = []
    known = threading.Event()

    def cancel(request_id: str) -> bool:
        calls.append(request_id)
        return known.is_set()
    watch = DisconnectWatch(cancel, poll_s=0.01)
    with watch.watching("r1", lambda: True) as cancelled:
        assert wait_until(lambda: len(calls) >= 2, timeout_s=5)
        assert not cancelled.is_set()                     # not yet dispatched to the node: asked again
        known.set()
        assert cancelled.wait(5)
    with watch.watching("r2", None) as never:             # no probe: nothing to watch
        assert not never.is_set()
    assert set(calls) == {"r1"}


def test_a_cancel_that_ends_the_invocation_is_seen_by_it() -> None:
    """The node's cancel ends the invocation (its thread wakes) before ``cancel`` returns: the
    invocation must still read ``cancelled`` as set once its block is over."""
    ended = threading.Event()

    def cancel(request_id: str) -> bool:
        ended.set()          # the invocation's call is finished by the node here...
        time.sleep(0.2)      # ...and the watcher is preempted before it can say so
        return True
    watch = DisconnectWatch(cancel, poll_s=0.01)
    with watch.watching("r1", lambda: True) as cancelled:
        assert ended.wait(5)
    assert cancelled.is_set()


def test_no_cancel_after_the_invocation_ended() -> None:
    calls: list[str] = []
    gone = threading.Event()
    watch = DisconnectWatch(lambda rid: calls.append(rid) or True, poll_s=0.01)
    with watch.watching("r1", gone.is_set) as cancelled:
        pass
    gone.set()
    with watch.watching("r2", lambda: False):
        time.sleep(0.05)     # the watcher polls a few times meanwhile
    assert calls == [] and not cancelled.is_set()
