"""Acceptance 9: ``slfaas logs NAME`` shows the handler's own print() output and the node's
START/END/REPORT lines for each invocation."""
from __future__ import annotations

import re
import subprocess
import sys
import uuid

import pytest

from tests.conftest import ROOT, deploy
from tests.integration._util import invoke, request_id

PRINTING_HANDLER = '''
def handler(event, context):
    print(f"handler says {event['marker']} for {context.aws_request_id}")
    return context.generate(event.get("prompt", "hi"), max_tokens=3, temperature=0)
'''


def _logs(url: str, name: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "slfaas.cli.main", "logs", name, "--endpoint", url],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)


def test_cli_logs_show_prints_and_report_lines(tiny_assets, module_server):  # type: ignore[no-untyped-def]
    c = module_server.client()
    deploy(c, "chatty", tiny_assets.zip(tiny_assets.adapter_a, extra={"handler.py": PRINTING_HANDLER}))
    markers = [uuid.uuid4().hex for _ in range(2)]
    rids = []
    for m in markers:
        resp, body = invoke(c, "chatty", {"marker": m})
        assert "FunctionError" not in resp, body
        rids.append(request_id(resp))
    # An error is logged too.
    err_resp, _ = invoke(c, "chatty", {"no": "marker"})
    assert err_resp.get("FunctionError")

    out = _logs(module_server.url, "chatty")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    for m, rid in zip(markers, rids):
        assert f"handler says {m} for {rid}" in text
        assert f"START RequestId: {rid}" in text
        assert f"END RequestId: {rid}" in text
        assert re.search(rf"REPORT RequestId: {rid}\tDuration: [\d.]+ ms\tBilled Duration: \d+ ms", text)
        # START, the handler's print, END and REPORT come in that order.
        order = [text.index(f"START RequestId: {rid}"), text.index(f"handler says {m}"),
                 text.index(f"END RequestId: {rid}"), text.index(f"REPORT RequestId: {rid}")]
        assert order == sorted(order)
    assert "Init Duration" in text  # the first (cold) REPORT
    err_rid = request_id(err_resp)
    assert f"END RequestId: {err_rid}" in text
    assert re.search(rf"ERROR RequestId: {err_rid} \S+: .*marker", text)
    assert "KeyError" in text  # the handler's traceback reached the log

    missing = _logs(module_server.url, "no-such-function")
    assert missing.returncode != 0
    assert "ResourceNotFoundException" in missing.stderr


HUGE_LINE_HANDLER = '''
import sys


def handler(event, context):
    chunk = "x" * (1 << 20)
    for _ in range(event["mb"]):   # one line of event["mb"] MiB, no newline until the end
        sys.stdout.write(chunk)
    print(f"\\nafter {event['marker']}", flush=True)
    return {"ok": True}
'''


def _peak_rss_mb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        return next(int(line.split()[1]) // 1024 for line in fh if line.startswith("VmHWM:"))


@pytest.mark.slow
def test_a_300_mb_line_does_not_grow_the_server(tiny_assets, live_server_factory):  # type: ignore[no-untyped-def]
    server = live_server_factory("--keep-alive-s", "600")
    c = server.client()
    deploy(c, "huge", tiny_assets.zip(tiny_assets.adapter_a, extra={"handler.py": HUGE_LINE_HANDLER}))
    invoke(c, "huge", {"mb": 1, "marker": "warm"})      # cold start and a long line once
    before_mb = _peak_rss_mb(server.proc.pid)
    resp, body = invoke(c, "huge", {"mb": 300, "marker": "big"})
    assert "FunctionError" not in resp, body
    grown_mb = _peak_rss_mb(server.proc.pid) - before_mb
    assert grown_mb < 64, f"the server's peak memory grew by {grown_mb} MB for one 300 MB line"
    log_path = server.data_dir / "logs" / "huge.log"
    assert log_path.stat().st_size < 4 << 20       # nor does its log file
    text = log_path.read_text()
    assert text.count("[slfaas: line truncated at 262144 bytes]") == 2
    assert "after big" in text
