"""Billing against a live server (its registry on SQLite and on PostgreSQL): usage records per
invocation, conservation of device time against the node's own clock, report totals that
survive a restart and parse back from CSV/JSON, the REPORT line's billing fields, and hard
budgets that stop a burst."""
from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import threading
import time
from decimal import Decimal

import pytest

from tests.conftest import ROOT, deploy
from tests.integration._util import invoke, request_id, wait_for

pytestmark = pytest.mark.slow

EVENT = {"prompt": "hoist the sails", "max_tokens": 6, "temperature": 0}


def _usage(server, function: str | None = None) -> list[dict]:  # type: ignore[no-untyped-def]
    path = "/slfaas/v1/cost/usage" + (f"?function={function}" if function else "")
    return server.api("GET", path)["Usage"]


def _nodes(server) -> list[dict]:  # type: ignore[no-untyped-def]
    return server.api("GET", "/slfaas/v1/cost/nodes")["Nodes"]


def test_usage_conservation_and_report_survive_restart(tiny_assets, live_server_factory,  # type: ignore[no-untyped-def]
                                                       tmp_path, registry_flags):
    data_dir = tmp_path / "billing"
    t_before_start = time.time()
    first = live_server_factory("--keep-alive-s", "2", *registry_flags, data_dir=data_dir)
    c = first.client()
    deploy(c, "bill-a", tiny_assets.zip(tiny_assets.adapter_a))
    deploy(c, "bill-b", tiny_assets.zip(tiny_assets.adapter_b))
    rids: dict[str, str] = {}
    for name in ("bill-a", "bill-b", "bill-a"):
        resp, body = invoke(c, name, EVENT)
        assert "FunctionError" not in resp
        rids[request_id(resp)] = name
    # two at once on different instances: their overlap is shared, never billed twice
    threads = [threading.Thread(target=lambda n=n: rids.__setitem__(request_id(invoke(c, n, EVENT)[0]), n))
               for n in ("bill-a", "bill-b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # the REPORT line carries what billing charged
    tail = first.api("GET", "/slfaas/v1/functions/bill-a/logs")
    report_lines = [ln for ln in str(tail).splitlines() if "REPORT RequestId:" in ln]
    assert report_lines and all("Billed Device Seconds:" in ln and "Batch Size: 1" in ln and "Cost: $" in ln
                                and "Preload Tier:" in ln for ln in report_lines)
    wait_for(lambda: not [i for i in first.api("GET", "/slfaas/v1/node")["Instances"]], 15,
             "keep-alive to stop the idle instances")
    usage = {u["request_id"]: u for u in _usage(first)}
    assert set(usage) == set(rids)
    cold = [u for u in usage.values() if u["cold_start"]]
    assert {u["function_name"] for u in cold} >= {"bill-a", "bill-b"}
    for u in usage.values():
        assert u["status"] == "success" and u["batch_size"] == 1 and u["device"] == "cpu"
        assert u["compute_device_s"] > 0 and u["tokens_in"] > 0 and 0 < u["tokens_out"] <= 6
        assert Decimal(u["cost_usd"]) > 0
        if u["cold_start"]:
            assert u["init_device_s"] > 0.5 and u["preload_tier"] == "cold"
            assert set(u["init_phases_s"]) >= {"sandbox_start", "imports", "adapter_load"}
            assert sum(u["init_phases_s"].values()) == pytest.approx(u["init_device_s"], rel=0.5)
        else:
            assert u["init_device_s"] == 0 and u["preload_tier"] == "warm"
    stop_ts = time.time()
    assert first.stop() == 0
    t_after_stop = time.time()

    second = live_server_factory(*registry_flags, data_dir=data_dir)
    nodes = _nodes(second)
    old = [n for n in nodes if n["start_ts"] < stop_ts]
    assert len(old) == 1
    node = old[0]
    # the node's metered time is its own uptime, checked against this test's clock
    assert t_before_start <= node["start_ts"] and node["end_ts"] <= t_after_stop
    assert node["elapsed_s"] == pytest.approx(node["end_ts"] - node["start_ts"], rel=1e-6)
    billed = sum(u["compute_device_s"] + u["init_device_s"] for u in usage.values())
    assert node["billed_device_s"] == pytest.approx(billed, rel=1e-6)
    overhead = sum(node["overhead_s"].values())
    assert abs(billed + overhead - node["elapsed_s"]) <= 0.01 * node["elapsed_s"]
    assert node["overhead_s"]["keep_alive"] > 1.0      # idle instances held until keep-alive ran out
    assert set(node["keep_alive_by_function_s"]) == {"bill-a", "bill-b"}

    # report totals: the sum of per-invocation costs, to the cent (exactly, in fact), after restart
    rep = second.api("GET", "/slfaas/v1/cost/report?format=json")
    total_cost = sum((Decimal(u["cost_usd"]) for u in usage.values()), Decimal(0))
    assert Decimal(rep["total"]["cost_usd"]) == total_cost
    assert rep["total"]["invocations"] == len(usage)
    text = second.api("GET", "/slfaas/v1/cost/report?format=csv")
    rows = list(csv.DictReader(io.StringIO(text)))
    per_fn = {r["key"]: r for r in rows}
    assert Decimal(per_fn["TOTAL"]["cost_usd"]) == total_cost
    assert sum(Decimal(per_fn[f]["cost_usd"]) for f in ("bill-a", "bill-b")) == total_cost
    assert int(per_fn["bill-a"]["invocations"]) == sum(1 for n in rids.values() if n == "bill-a")
    html = second.api("GET", "/slfaas/v1/cost/report?format=html")
    assert html.count("<svg") >= 3 and "bill-a" in html
    assert second.stop() == 0

    # no server: straight from the registry (the data dir's, or the database), the same total
    source = list(registry_flags) or ["--data-dir", str(data_dir)]
    out = subprocess.run([sys.executable, "-m", "slfaas.cli.main", "cost", "report", *source,
                          "--format", "json"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert Decimal(json.loads(out.stdout)["total"]["cost_usd"]) == total_cost
    bad = subprocess.run([sys.executable, "-m", "slfaas.cli.main", "cost", "report", *source,
                          "--since", "yesterday-ish"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert bad.returncode != 0 and "cannot read time" in bad.stderr and "Traceback" not in bad.stderr


def test_hard_budget_stops_a_burst_at_the_limit(tiny_assets, live_server_factory,  # type: ignore[no-untyped-def]
                                               registry_flags):
    server = live_server_factory("--keep-alive-s", "600", *registry_flags)
    c = server.client()
    deploy(c, "budgeted", tiny_assets.zip(tiny_assets.adapter_a))
    for _ in range(3):   # a cold start, then warm costs to estimate from
        invoke(c, "budgeted", EVENT)
    warm = [Decimal(u["cost_usd"]) for u in _usage(server, "budgeted") if not u["cold_start"]]
    spent_before = sum((Decimal(u["cost_usd"]) for u in _usage(server, "budgeted")), Decimal(0))
    limit = spent_before + max(warm) * Decimal("3.5")
    out = server.api("PUT", "/slfaas/v1/cost/budgets/burst",
                     {"LimitUsd": str(limit), "Period": "day", "Hard": True, "FunctionName": "budgeted"})
    assert out["Hard"] is True and out["Level"] in ("ok", "warning", "exceeded")

    outcomes: list[str] = []
    lock = threading.Lock()

    def one() -> None:
        try:
            resp, _ = invoke(c, "budgeted", EVENT)
            result = "error" if "FunctionError" in resp else "ok"
        except c.exceptions.TooManyRequestsException as exc:
            assert exc.response["Reason"] == "BudgetExceeded"
            assert "burst" in exc.response["Error"]["Message"]
            result = "throttled"
        with lock:
            outcomes.append(result)

    for _ in range(4):   # 4 waves of 3 concurrent invocations
        wave = [threading.Thread(target=one) for _ in range(3)]
        for t in wave:
            t.start()
        for t in wave:
            t.join()
        # A usage record settles its invocation's reservation a moment after the response; until
        # then the reservation (the function's largest recent cost, its cold start's) stands in,
        # and a next wave sent at once would be refused against it, whatever the budget left.
        wait_for(lambda: len(_usage(server, "budgeted")) == 3 + outcomes.count("ok"), 60, "usage records")
    assert outcomes.count("error") == 0, outcomes
    assert outcomes.count("throttled") >= 6, outcomes
    spent_after = sum((Decimal(u["cost_usd"]) for u in _usage(server, "budgeted")), Decimal(0))
    burst_costs = [Decimal(u["cost_usd"]) for u in _usage(server, "budgeted")][3:]
    assert len(burst_costs) == outcomes.count("ok") >= 2, (outcomes, burst_costs, limit)
    # never more than one invocation over the limit
    assert spent_after <= limit + max(burst_costs), (spent_after, limit, burst_costs)
    # One by one now, the reservations gone: an invocation passes while the spend is below the
    # limit, and the next is refused once it reached it. A warm invocation's cost is its wall
    # time, which varies severalfold with the machine's load, so the room left is made smaller
    # than any invocation costs (its request fee): exactly one more passes.
    spent = sum((Decimal(u["cost_usd"]) for u in _usage(server, "budgeted")), Decimal(0))
    if spent < limit:
        limit = spent + Decimal("0.0000001")
        server.api("PUT", "/slfaas/v1/cost/budgets/burst",
                   {"LimitUsd": str(limit), "Period": "day", "Hard": True, "FunctionName": "budgeted"})
        resp, _ = invoke(c, "budgeted", EVENT)
        assert "FunctionError" not in resp
    with pytest.raises(c.exceptions.TooManyRequestsException):
        invoke(c, "budgeted", EVENT)
    costs = [Decimal(u["cost_usd"]) for u in _usage(server, "budgeted")]
    assert sum(costs, Decimal(0)) <= limit + max(costs[3:])
    log_text = str(server.api("GET", "/slfaas/v1/functions/budgeted/logs"))
    assert "BUDGET EXCEEDED" in log_text or "BUDGET WARNING" in log_text
    rep = server.api("GET", "/slfaas/v1/cost/report?format=json&function=budgeted")
    assert any(b["level"] != "ok" for b in rep["budgets"])
    # raising the budget lets invocations through again
    server.api("PUT", "/slfaas/v1/cost/budgets/burst",
               {"LimitUsd": str(limit * 100), "Period": "day", "Hard": True, "FunctionName": "budgeted"})
    resp, _ = invoke(c, "budgeted", EVENT)
    assert "FunctionError" not in resp
    # bad budgets: the AWS error shape, never a 500
    from slfaas.client import CliError
    for body in ({"LimitUsd": "-1"}, {"LimitUsd": "ten"}, {"LimitUsd": "1", "Period": "week"}, {"Period": "day"},
                 {"LimitUsd": "1", "Hard": "yes"}):
        with pytest.raises(CliError, match="InvalidParameterValueException"):
            server.api("PUT", "/slfaas/v1/cost/budgets/b2", body)
    with pytest.raises(CliError, match="ResourceNotFoundException"):
        server.api("DELETE", "/slfaas/v1/cost/budgets/nope")
