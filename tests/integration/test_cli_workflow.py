"""The click CLI as a user runs it (subprocesses, boto3 underneath) against a live server:
deploy → invoke (buffered and streamed) → logs (tail, --since, --follow) → list → delete with
``--output json`` read back, streaming that prints while the function still runs, and
``node status`` matching the node's own report."""
from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Callable, Iterator

import pytest

from tests.conftest import ROOT
from tests.integration._util import node

pytestmark = pytest.mark.slow

# Prints a marker for the logs; with {"mode": "hold"} streams a first piece, then holds the
# invocation open (until the function is deleted), so a reader can see the first piece arrive
# while the function still runs.
HANDLER = '''
import time


def handler(event, context):
    if "marker" in event:
        print(f"handler says {event['marker']}", flush=True)
    if event.get("mode") == "hold":
        def pieces():
            yield "first "
            time.sleep(600)
            yield "never"
        return pieces()
    return context.stream_event(event) if context.response_stream else context.generate_event(event)
'''
EVENT = {"prompt": "hello", "max_tokens": 6, "temperature": 0}


def slfaas(*args: str, url: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "slfaas.cli.main", *args, "--endpoint", url], input=stdin,
                          capture_output=True, text=True, timeout=300, cwd=ROOT)


def ok(*args: str, url: str) -> subprocess.CompletedProcess:
    r = slfaas(*args, url=url)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    return r


class Background:
    """A long-running CLI command (--follow, --watch, --stream) whose output is read as it comes."""

    def __init__(self, *args: str, url: str):
        # Ctrl-C as a user's shell delivers it: a runner started in the background (``cmd &``)
        # ignores SIGINT, and Python keeps an inherited ignore (no KeyboardInterrupt, no exit)
        self.proc = subprocess.Popen([sys.executable, "-m", "slfaas.cli.main", *args, "--endpoint", url],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT,
                                     preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        self.chunks: "queue.Queue[bytes]" = queue.Queue()
        self.seen = b""
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while chunk := os.read(fd, 4096):
            self.chunks.put(chunk)

    def _until(self, done: Callable[[bytes], bool], what: str, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        while not done(self.seen):
            try:
                self.seen += self.chunks.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no {what} within {timeout_s} s; output so far: {self.seen!r}") from None
        return self.seen.decode()

    def wait_for(self, text: str, timeout_s: float = 120) -> str:
        return self._until(lambda seen: text.encode() in seen, repr(text), timeout_s)

    def wait_lines(self, n: int, timeout_s: float = 120) -> list[str]:
        return self._until(lambda seen: seen.count(b"\n") >= n, f"{n} lines", timeout_s).splitlines()[:n]

    def interrupt(self) -> tuple[int, str]:
        self.proc.send_signal(signal.SIGINT)
        code = self.proc.wait(60)
        assert self.proc.stderr is not None
        return code, self.proc.stderr.read().decode()


@pytest.fixture(scope="module")
def adapter_dir(tiny_assets, tmp_path_factory: pytest.TempPathFactory) -> Path:  # type: ignore[no-untyped-def]
    out = tmp_path_factory.mktemp("cli-adapter") / "adapter"
    shutil.copytree(tiny_assets.adapter_a, out)
    (out / "handler.py").write_text(HANDLER)
    return out


@pytest.fixture
def background() -> Iterator[list[Background]]:
    started: list[Background] = []
    yield started
    for b in started:
        if b.proc.poll() is None:
            b.proc.kill()
            b.proc.wait()


def test_deploy_invoke_logs_list_delete(adapter_dir: Path, module_server, background) -> None:  # type: ignore[no-untyped-def]
    url = module_server.url
    r = ok("deploy", "clk-fn", "--adapter", str(adapter_dir), "-o", "json", url=url)
    cfg = json.loads(r.stdout)
    assert (cfg["FunctionName"], cfg["State"], cfg["LastUpdateStatus"]) == ("clk-fn", "Active", "Successful")
    assert "creating function clk-fn" in r.stderr and "waiting" in r.stderr  # progress, plain when piped

    m1, m2, m3 = (uuid.uuid4().hex for _ in range(3))
    body = json.loads(ok("invoke", "clk-fn", "--payload", json.dumps({**EVENT, "marker": m1}), url=url).stdout)
    assert body["usage"]["completion_tokens"] == 6 and body["metrics"]["cold_start"] is True
    streamed = ok("invoke", "clk-fn", "--prompt", "hello", "--max-tokens", "6", "--stream", url=url)
    assert streamed.stdout.strip() == body["text"].strip() != ""
    text = ok("invoke", "clk-fn", "--prompt", "hello", "--max-tokens", "6", "--text", url=url)
    assert text.stdout.strip() == body["text"].strip()

    logs = ok("logs", "clk-fn", url=url).stdout
    assert f"handler says {m1}" in logs and "START RequestId:" in logs and "REPORT RequestId:" in logs
    between = time.time()
    ok("invoke", "clk-fn", "--payload", json.dumps({**EVENT, "marker": m2}), url=url)
    since = ok("logs", "clk-fn", "--since", f"{between:.3f}", url=url).stdout
    assert f"handler says {m2}" in since and f"handler says {m1}" not in since
    assert since.splitlines()[-1].split(" [")[0] >= since.splitlines()[0].split(" [")[0]  # stamped, in order
    assert f"handler says {m1}" in ok("logs", "clk-fn", "--since", "1h", url=url).stdout
    bad = slfaas("logs", "clk-fn", "--since", "whenever", url=url)
    assert bad.returncode == 1 and bad.stderr.startswith("slfaas: error: InvalidParameterValueException: cannot read")

    follow = Background("logs", "clk-fn", "--follow", "--interval-s", "0.2", url=url)
    background.append(follow)
    follow.wait_for(f"handler says {m2}")          # the tail first
    ok("invoke", "clk-fn", "--payload", json.dumps({**EVENT, "marker": m3}), url=url)
    out = follow.wait_for(f"handler says {m3}")    # then what is written after
    follow.wait_for("REPORT RequestId:", timeout_s=60)
    assert out.count(f"handler says {m2}") == 1    # nothing printed twice
    code, err = follow.interrupt()
    assert code == 0 and "Traceback" not in err

    listed = json.loads(ok("list", "-o", "json", url=url).stdout)["Functions"]
    (fn,) = [f for f in listed if f["FunctionName"] == "clk-fn"]
    assert fn["State"] == "Active" and fn["FunctionArn"] == cfg["FunctionArn"]
    table = ok("list", url=url).stdout
    assert table.splitlines()[0].split() == ["NAME", "STATE", "MEMORY", "TIMEOUT", "LAST", "MODIFIED"]

    assert ok("delete", "clk-fn", url=url).stdout.strip() == "deleted clk-fn"
    assert "clk-fn" not in [f["FunctionName"] for f in json.loads(ok("list", "-o", "json", url=url).stdout)["Functions"]]
    gone = slfaas("invoke", "clk-fn", "--prompt", "x", url=url)
    assert gone.returncode == 1 and gone.stderr.startswith("slfaas: error: ResourceNotFoundException")
    assert len(gone.stderr.strip().splitlines()) == 1


def test_stream_prints_while_the_function_runs(adapter_dir: Path, module_server, background) -> None:  # type: ignore[no-untyped-def]
    url = module_server.url
    ok("deploy", "clk-hold", "--adapter", str(adapter_dir), "--timeout", "600", url=url)
    stream = Background("invoke", "clk-hold", "--payload", '{"mode": "hold"}', "--stream", url=url)
    background.append(stream)
    stream.wait_for("first ")
    assert stream.proc.poll() is None  # the function is still holding: the piece came as it was made
    code, err = stream.interrupt()
    assert code == 130 and "Traceback" not in err
    ok("delete", "clk-hold", url=url)  # ends the held invocation's instance


def test_node_status_matches_the_node_report(adapter_dir: Path, module_server, background) -> None:  # type: ignore[no-untyped-def]
    url = module_server.url
    ok("deploy", "clk-node", "--adapter", str(adapter_dir), url=url)
    for _ in range(2):  # a cold start, then a warm one
        ok("invoke", "clk-node", "--prompt", "hi", "--max-tokens", "3", url=url)

    status = json.loads(ok("node", "status", "-o", "json", url=url).stdout)
    report = node(module_server)
    for key in ("NodeId", "Device", "Sandbox", "Backbones", "Gpu", "Pools"):
        assert status[key] == report[key], key
    assert sorted(status["Instances"], key=lambda i: i["instance_id"]) == \
        sorted(report["Instances"], key=lambda i: i["instance_id"])
    assert [i["function_name"] for i in status["Instances"]].count("clk-node") == 1
    assert sum(b["size_bytes"] for b in status["Backbones"]) > 0

    recent = [r for r in status["RecentInvocations"] if r["function_name"] == "clk-node"]
    records = module_server.api("GET", "/slfaas/v1/invocations?function=clk-node")["Invocations"]
    assert [r["request_id"] for r in recent] == [r["request_id"] for r in records]
    assert [r["cold_start"] for r in recent] == [False, True]  # newest first
    usage = {u["request_id"]: u["cost_usd"] for u in module_server.api("GET", "/slfaas/v1/cost/usage")["Usage"]}
    assert all(r["cost_usd"] == usage[r["request_id"]] for r in recent)

    table = ok("node", "status", url=url).stdout
    assert f"node {report['NodeId']}" in table
    (line,) = [ln for ln in table.splitlines() if ln.startswith("clk-node ")]
    assert "IDLE" in line.split()
    assert "Recent invocations" in table and "cold" in table and "warm" in table
    assert ok("node", url=url).stdout.splitlines()[0] == table.splitlines()[0]  # `node` alone is status

    watch = Background("node", "status", "--watch", "-o", "json", "--interval-s", "0.2", url=url)
    background.append(watch)
    snapshots = [json.loads(ln) for ln in watch.wait_lines(2)]  # one JSON document per line, per interval
    assert [s["NodeId"] for s in snapshots] == [report["NodeId"]] * 2
    code, err = watch.interrupt()
    assert code == 0 and "Traceback" not in err
    ok("delete", "clk-node", url=url)


def test_listing_commands_speak_json(tiny_assets, module_server) -> None:  # type: ignore[no-untyped-def]
    url = module_server.url
    ok("models", "add", "clk-tiny", str(tiny_assets.base), url=url)
    models = json.loads(ok("models", "list", "-o", "json", url=url).stdout)["Models"]
    assert {"Name": "clk-tiny", "Path": str(tiny_assets.base)} in models
    ok("cost", "budget", "set", "clk-budget", "--usd", "5", "--period", "day", url=url)
    budgets = json.loads(ok("cost", "budget", "list", "-o", "json", url=url).stdout)["Budgets"]
    (b,) = [b for b in budgets if b["Name"] == "clk-budget"]
    assert (b["LimitUsd"], b["Period"], b["Hard"]) == ("5", "day", False)
    assert "clk-budget" in ok("cost", "budget", "list", url=url).stdout
    ok("cost", "budget", "delete", "clk-budget", url=url)
    ok("models", "remove", "clk-tiny", url=url)
    assert "clk-tiny" not in ok("models", "list", url=url).stdout
