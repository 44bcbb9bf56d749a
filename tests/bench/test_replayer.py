"""The open-loop scheduler in isolation (the sender is a double here; the live test in
tests/integration/test_bench_replay.py drives the real boto3 sender against a server):
requests start at their scheduled instants whether or not earlier ones finished, a busy
client's lateness is charged from the scheduled instant, and a failing sender loses nothing."""
from __future__ import annotations

import threading

import pytest

from slfaas.bench import PlannedRequest, RequestRecord, TraceError
from slfaas.bench.replayer import Clock, WorkItem, run_open_loop


def _items(arrivals: list[float]) -> list[WorkItem]:
    return [WorkItem(PlannedRequest(i, a, f"fn-{i % 2}", 5, 3, 5, 3), f"prompt {i}", 5) for i, a in enumerate(arrivals)]


class BlockingSender:
    """Every call waits until ``release_after`` calls are in progress at once (or gives up)."""

    def __init__(self, release_after: int):
        self.release_after = release_after
        self.lock = threading.Lock()
        self.in_flight = 0
        self.most_in_flight = 0
        self.released = threading.Event()
        self.gave_up = 0

    def __call__(self, item: WorkItem, scheduled_s: float, clock: Clock) -> RequestRecord:
        sent = clock()
        with self.lock:
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
            if self.in_flight >= self.release_after:
                self.released.set()
        if not self.released.wait(30):
            self.gave_up += 1
        first = clock()
        with self.lock:
            self.in_flight -= 1
        return item.record(scheduled_s, sent_s=sent, first_byte_s=first, end_s=clock(), request_id=f"r{item.request.index}")


def test_open_loop_sends_without_waiting_for_earlier_requests() -> None:
    items = _items([0.0, 0.01, 0.02, 0.03, 0.04, 0.05])
    sender = BlockingSender(release_after=6)     # a closed loop would never reach 6 in flight
    done: list[RequestRecord] = []
    run = run_open_loop(items, sender, speedup=1.0, max_in_flight=8, on_done=done.append)
    assert sender.gave_up == 0 and sender.most_in_flight == 6
    assert [r.index for r in run.records] == list(range(6))
    assert sorted(r.index for r in done) == list(range(6))
    assert all(r.sent_s is not None and r.sent_s >= r.scheduled_s for r in run.records)


def test_speedup_divides_the_schedule() -> None:
    run = run_open_loop(_items([0.0, 1.0, 3.0]), BlockingSender(1), speedup=100.0, max_in_flight=4)
    assert [r.scheduled_s for r in run.records] == [0.0, 0.01, 0.03]
    assert run.wall_s >= 0.03


def test_a_saturated_client_is_late_and_the_lateness_counts() -> None:
    """One connection: each request waits for the one before; its TTFT still counts from the
    scheduled instant, so it includes the wait."""
    items = _items([0.0] * 5)
    sender = BlockingSender(release_after=1)
    run = run_open_loop(items, sender, speedup=1.0, max_in_flight=1)
    assert sender.most_in_flight == 1
    for before, after in zip(run.records, run.records[1:]):
        assert after.sent_s >= before.end_s
    for r in run.records:
        assert r.ttft_ms == pytest.approx((r.first_byte_s - r.scheduled_s) * 1000)
        assert r.ttft_ms >= (r.first_byte_s - r.sent_s) * 1000
    assert run.records[-1].client_lag_ms >= run.records[0].client_lag_ms


def test_a_failing_sender_becomes_an_error_record() -> None:
    def sender(item: WorkItem, scheduled_s: float, clock: Clock) -> RequestRecord:
        if item.request.index == 1:
            raise RuntimeError("client bug")
        return item.record(scheduled_s, sent_s=clock(), first_byte_s=clock(), end_s=clock())

    run = run_open_loop(_items([0.0, 0.0, 0.0]), sender, speedup=1.0, max_in_flight=2)
    assert [r.ok for r in run.records] == [True, False, True]
    assert (run.records[1].error_type, run.records[1].error) == ("RuntimeError", "client bug")


def test_event_asks_for_exact_lengths() -> None:
    item = _items([0.0])[0]
    assert item.event() == {"prompt": "prompt 0", "max_tokens": 3, "temperature": 0, "ignore_eos": True}


@pytest.mark.parametrize("kwargs, match", [
    ({"speedup": 0.0, "max_in_flight": 1}, "--speedup must be a number > 0"),
    ({"speedup": float("inf"), "max_in_flight": 1}, "--speedup must be"),
    ({"speedup": 1.0, "max_in_flight": 0}, "--max-in-flight must be at least 1"),
])
def test_bad_options(kwargs: dict, match: str) -> None:
    with pytest.raises(TraceError, match=match):
        run_open_loop(_items([0.0]), BlockingSender(1), **kwargs)


def test_unordered_items_are_refused() -> None:
    with pytest.raises(TraceError, match="arrival order"):
        run_open_loop(_items([1.0, 0.5]), BlockingSender(1), speedup=1.0, max_in_flight=1)


class ScriptedBoto3Sender:
    """The real Boto3Sender's retry loop over scripted single attempts (``_once``)."""

    @staticmethod
    def make(retry_throttled_s: float, outcomes: list[str | None]):  # type: ignore[no-untyped-def]
        from slfaas.bench.replayer import Boto3Sender

        class Scripted(Boto3Sender):
            attempts = 0

            def _once(self, item: WorkItem, scheduled_s: float, clock: Clock) -> RequestRecord:
                error = outcomes[min(self.attempts, len(outcomes) - 1)]
                self.attempts += 1
                return item.record(scheduled_s, sent_s=clock(), end_s=clock(), error_type=error,
                                   first_byte_s=None if error else clock())
        return Scripted("http://127.0.0.1:9", 1, retry_throttled_s=retry_throttled_s)


def test_throttles_are_waited_out_within_the_retry_window_and_counted() -> None:
    item = _items([0.0])[0]
    sender = ScriptedBoto3Sender.make(10.0, ["TooManyRequestsException", "TooManyRequestsException", None])
    record = sender(item, 0.0, lambda: 0.0)
    assert record.ok and record.throttles == 2 and sender.attempts == 3
    # no retry window: the 429 is the result; an error other than a throttle is never retried
    for window, outcomes in ((0.0, ["TooManyRequestsException", None]), (10.0, ["ServiceException", None])):
        sender = ScriptedBoto3Sender.make(window, outcomes)
        record = sender(item, 0.0, lambda: 0.0)
        assert not record.ok and record.error_type == outcomes[0] and record.throttles == 0 and sender.attempts == 1
