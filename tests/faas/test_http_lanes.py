"""The HTTP server's two lanes: which requests are invocations (by the app's own routes), and a
real waitress server handing a free thread to a control request before queued invocations."""
from __future__ import annotations

import threading
import urllib.request

import pytest
from flask import Flask
from waitress.server import create_server

from slfaas.faas.api import create_app
from slfaas.faas.http_lanes import TwoLaneQueue, invocation_classifier, lane_dispatcher
from tests.gpu_node.fakes import wait_until


@pytest.mark.parametrize("method, path, invocation", [
    ("POST", "/2015-03-31/functions/fn/invocations", True),
    ("POST", "/2015-03-31/functions/arn:aws:lambda:us-east-1:000000000000:function:fn:prod/invocations", True),
    ("POST", "/2021-11-15/functions/fn/response-streaming-invocations", True),
    ("POST", "/v1/chat/completions", True),
    ("POST", "/v1/completions", True),
    ("GET", "/slfaas/v1/health", False),
    ("GET", "/2015-03-31/functions/", False),
    ("GET", "/2015-03-31/functions/fn", False),
    ("DELETE", "/2015-03-31/functions/fn", False),
    ("GET", "/2015-03-31/functions/fn/invocations", False),   # 405: answered at once
    ("POST", "/no/such/route", False),
])
def test_invocations_are_told_apart_by_the_apps_routes(svc, method: str, path: str, invocation: bool) -> None:  # type: ignore[no-untyped-def]
    assert invocation_classifier(create_app(svc))(method, path) is invocation


def test_a_renamed_invocation_view_is_refused_at_start() -> None:
    app = Flask("other")
    app.add_url_rule("/x", "lambda_api.invoke", lambda: "")
    with pytest.raises(RuntimeError, match="openai_api.completions"):
        invocation_classifier(app)


def test_control_leaves_the_queue_before_invocations_each_lane_in_order() -> None:
    q = TwoLaneQueue(lambda task: task.startswith("invoke"))
    for task in ("invoke-1", "health-1", "invoke-2", "list-1"):
        q.append(task)
    assert len(q) == 4 and q
    assert [q.popleft() for _ in range(4)] == ["health-1", "list-1", "invoke-1", "invoke-2"]
    assert not q and len(q) == 0
    with pytest.raises(IndexError):
        q.popleft()


class _LaneServer:
    """A real waitress server on the lane dispatcher: ``/invoke/N`` (an invocation, held until
    ``release``) and ``/health``; ``served`` lists the views in the order they ran."""

    def __init__(self, threads: int, control_only: int):
        app = Flask("lanes")
        self.release = threading.Event()
        self.served: list[str] = []

        @app.post("/invoke/<int:n>")
        def invoke(n: int) -> str:
            self.served.append(f"invoke-{n}")
            self.release.wait(30)
            return "ok"

        @app.get("/health")
        def health() -> str:
            self.served.append("health")
            return "ok"

        self.dispatcher = lane_dispatcher(lambda method, path: path.startswith("/invoke"), threads, control_only)
        # poll(), as the server runs it: closing the socket under select() fails its loop (EBADF)
        self.server = create_server(app, host="127.0.0.1", port=0, _dispatcher=self.dispatcher,
                                    asyncore_use_poll=True)
        self._loop = threading.Thread(target=self.server.run, daemon=True)
        self._loop.start()
        self.url = f"http://127.0.0.1:{self.server.effective_port}"

    def call(self, path: str, method: str = "GET") -> threading.Thread:
        def run() -> None:
            urllib.request.urlopen(urllib.request.Request(self.url + path, method=method,
                                                          data=b"" if method == "POST" else None), timeout=30).read()
        t = threading.Thread(target=run)
        t.start()
        return t

    def close(self) -> None:
        self.release.set()
        self.server.close()
        self._loop.join(10)


def test_a_free_thread_serves_health_before_queued_invocations() -> None:
    s = _LaneServer(threads=1, control_only=0)
    try:
        callers = [s.call("/invoke/0", "POST")]
        assert wait_until(lambda: s.served == ["invoke-0"], timeout_s=10)   # the one thread is busy
        callers += [s.call(f"/invoke/{n}", "POST") for n in range(1, 5)]
        assert wait_until(lambda: len(s.dispatcher.queue) == 4, timeout_s=10)
        callers.append(s.call("/health"))
        assert wait_until(lambda: len(s.dispatcher.queue) == 5, timeout_s=10)
        s.release.set()
        for t in callers:
            t.join(30)
        assert s.served[:2] == ["invoke-0", "health"], s.served
        assert sorted(s.served[2:]) == ["invoke-1", "invoke-2", "invoke-3", "invoke-4"]
    finally:
        s.close()


def test_health_is_served_while_every_other_thread_holds_an_invocation() -> None:
    s = _LaneServer(threads=2, control_only=1)
    try:
        callers = [s.call(f"/invoke/{n}", "POST") for n in range(4)]
        assert wait_until(lambda: len(s.served) == 2 and len(s.dispatcher.queue) == 2, timeout_s=10)
        health = s.call("/health")
        health.join(30)   # answered though both threads of both lanes are held
        assert not health.is_alive() and s.served[2:] == ["health"], s.served
        assert len(s.dispatcher.queue) == 2   # the control-only thread took no invocation
        s.release.set()
        for t in callers:
            t.join(30)
        assert sorted(s.served) == ["health", "invoke-0", "invoke-1", "invoke-2", "invoke-3"]
    finally:
        s.close()


def test_the_thread_count_is_fixed_until_shutdown() -> None:
    dispatcher = lane_dispatcher(lambda method, path: False, threads=2, control_only=1)
    try:
        with pytest.raises(ValueError, match="runs 3 threads until shutdown"):
            dispatcher.set_thread_count(2)   # could stop the only thread that takes invocations
        with pytest.raises(ValueError, match="none for invocations"):
            lane_dispatcher(lambda method, path: False, threads=0, control_only=2)
    finally:
        dispatcher.shutdown(timeout=10)
    assert not dispatcher.threads   # the control-only thread stopped too


def test_a_request_that_cannot_be_classified_is_served_as_control() -> None:
    def broken(method: str, path: str) -> bool:
        raise RuntimeError("classifier bug")

    s = _LaneServer(threads=1, control_only=1)
    s.dispatcher._is_invocation = broken
    try:
        s.call("/health").join(30)
        assert s.served == ["health"]
    finally:
        s.close()
