"""GET /slfaas/v1/functions/NAME/logs: the tail, or whole lines from an offset or a time, and
the offset to continue from (X-Slfaas-Log-Offset), over FunctionService and a fake node."""
from __future__ import annotations

import time

import pytest

from slfaas.faas.api import create_app
from slfaas.faas.log_tail import LOG_OFFSET_HEADER
from slfaas.gpu_node.logs import format_stamp
from tests.faas.test_service import _active


@pytest.fixture
def http(svc, zips):  # type: ignore[no-untyped-def]
    _active(svc, zips, "fn")
    return create_app(svc).test_client()


def _get(http, query: str = "", name: str = "fn"):  # type: ignore[no-untyped-def]
    return http.get(f"/slfaas/v1/functions/{name}/logs{query}")


def test_follow_by_offset(http, node) -> None:  # type: ignore[no-untyped-def]
    empty = _get(http, "?offset=0")
    assert empty.status_code == 200 and empty.text == "" and empty.headers[LOG_OFFSET_HEADER] == "0"
    node.function_logs.append("fn", "inst-1", "START RequestId: r1")
    node.function_logs.append("fn", "inst-1", "REPORT RequestId: r1")
    tail = _get(http)
    assert "START RequestId: r1" in tail.text and "REPORT RequestId: r1" in tail.text
    end = int(tail.headers[LOG_OFFSET_HEADER])
    assert end == node.function_logs.path("fn").stat().st_size
    assert _get(http, f"?offset={end}").text == ""
    node.function_logs.append("fn", "inst-1", "START RequestId: r2")
    nxt = _get(http, f"?offset={end}")
    assert nxt.text.endswith("START RequestId: r2\n") and "r1" not in nxt.text
    assert int(nxt.headers[LOG_OFFSET_HEADER]) == node.function_logs.path("fn").stat().st_size


def test_since(http, node) -> None:  # type: ignore[no-untyped-def]
    node.function_logs.append("fn", "inst-1", "early")
    with open(node.function_logs.path("fn"), "r+", encoding="utf-8") as fh:  # back-date it an hour
        line = fh.read()
        fh.seek(0)
        fh.write(format_stamp(time.time() - 3600) + line[24:])
    node.function_logs.append("fn", "inst-1", "recent")
    resp = _get(http, "?since=10m")
    assert resp.status_code == 200 and "recent" in resp.text and "early" not in resp.text
    both = _get(http, "?since=2h")
    assert "early" in both.text and "recent" in both.text
    assert int(resp.headers[LOG_OFFSET_HEADER]) == node.function_logs.path("fn").stat().st_size


@pytest.mark.parametrize("query, message", [
    ("?offset=-1", "offset must be a non-negative integer"),
    ("?offset=abc", "offset must be an integer"),
    ("?max_bytes=1e3", "max_bytes must be an integer"),
    ("?since=yesterday-ish", "cannot read time"),
])
def test_bad_parameters_are_aws_shaped_400s(http, query: str, message: str) -> None:  # type: ignore[no-untyped-def]
    resp = _get(http, query)
    assert resp.status_code == 400
    assert resp.headers["x-amzn-ErrorType"] == "InvalidParameterValueException"
    assert message in resp.get_json()["message"]


def test_unknown_function_is_404(http) -> None:  # type: ignore[no-untyped-def]
    resp = _get(http, "?offset=0", name="nope")
    assert resp.status_code == 404 and resp.headers["x-amzn-ErrorType"] == "ResourceNotFoundException"
