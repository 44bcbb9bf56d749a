"""Billing endpoints: cost reports and budgets (``slfaas cost ...`` talks to these)."""
from __future__ import annotations

import time
from decimal import Decimal, InvalidOperation
from dataclasses import asdict
from typing import Any

from flask import Blueprint, Response, current_app, request

from slfaas.billing.budgets import Budget, BudgetStatus
from slfaas.billing.records import UsageRecord
from slfaas.billing.report_html import render_html
from slfaas.billing.report_render import render_csv, render_table, report_to_dict
from slfaas.billing.service import parse_when
from slfaas.errors import InvalidParameter
from slfaas.faas.api.lambda_api import _json, _json_body
from slfaas.faas.naming import NAME_RE

MAX_LIMIT_USD = Decimal("1e12")

bp = Blueprint("cost_api", __name__, url_prefix="/slfaas/v1/cost")

_FORMATS = {"json": "application/json", "table": "text/plain; charset=utf-8", "csv": "text/csv; charset=utf-8",
            "html": "text/html; charset=utf-8"}


def _cost() -> Any:
    return current_app.extensions["slfaas.service"].cost


def budget_to_dict(status: BudgetStatus) -> dict:
    b = status.budget
    return {"Name": b.name, "LimitUsd": str(b.limit_usd), "Period": b.period, "Hard": b.hard,
            "FunctionName": b.function_name, "SpentUsd": str(status.spent_usd),
            "ProjectedUsd": str(status.projected_usd), "Level": status.level, "Blocks": status.blocks,
            "Message": status.message}


@bp.get("/report")
def report() -> Response:
    """Query: since, until (ISO, epoch or a duration ago), function, group_by, format."""
    args = request.args
    since, until = _window()
    if since is not None and until is not None and since >= until:
        raise InvalidParameter("since must be before until")
    fmt = args.get("format", "json")
    if fmt not in _FORMATS:
        raise InvalidParameter(f"format must be one of {', '.join(_FORMATS)}, got {fmt!r}")
    rep = _cost().report(since, until, args.get("group_by", "function"), args.get("function") or None)
    if fmt == "json":
        return _json(report_to_dict(rep))
    render = {"table": render_table, "csv": render_csv, "html": render_html}[fmt]
    return Response(render(rep), mimetype=_FORMATS[fmt])


@bp.get("/budgets")
def list_budgets() -> Response:
    return _json({"Budgets": [budget_to_dict(s) for s in _cost().budget_statuses()]})


@bp.put("/budgets/<name>")
def put_budget(name: str) -> Response:
    body = _json_body()
    if "LimitUsd" not in body:
        raise InvalidParameter("LimitUsd is required (a decimal string, e.g. \"25.00\")")
    hard = body.get("Hard", False)
    if not isinstance(hard, bool):
        raise InvalidParameter("Hard must be true or false")
    fn = body.get("FunctionName")
    if fn is not None and (not isinstance(fn, str) or not NAME_RE.match(fn)):
        # a qualified name or an ARN would never match an invocation: the budget would not apply
        raise InvalidParameter(f"FunctionName must be a plain function name ([a-zA-Z0-9-_]{{1,64}}, no "
                               f"qualifier or ARN), got {fn!r}")
    period = body.get("Period", "month")
    if not isinstance(period, str):
        raise InvalidParameter("Period must be day or month")
    limit = body["LimitUsd"]
    if not isinstance(limit, (str, int, float)) or isinstance(limit, bool) or len(str(limit)) > 40:
        raise InvalidParameter("LimitUsd must be a decimal string or a number")
    try:
        if Decimal(str(limit)) > MAX_LIMIT_USD:
            raise InvalidParameter(f"LimitUsd must be at most {MAX_LIMIT_USD}")
    except InvalidOperation:
        raise InvalidParameter(f"LimitUsd must be a decimal string or a number, got {limit!r}") from None
    status = _cost().set_budget(Budget.create(name, limit, period, hard, fn))
    return _json(budget_to_dict(status), 201)


@bp.delete("/budgets/<name>")
def delete_budget(name: str) -> Response:
    _cost().delete_budget(name)
    return Response(status=204)


def usage_to_dict(rec: UsageRecord) -> dict:
    out = asdict(rec)
    out["cost_usd"] = str(rec.cost_usd)
    out["init_phases_s"] = dict(rec.init_phases_s)
    out["billed_device_s"] = rec.billed_device_s
    return out


def _window() -> tuple[float | None, float | None]:
    now = time.time()
    since = parse_when(request.args["since"], now) if request.args.get("since") else None
    until = parse_when(request.args["until"], now) if request.args.get("until") else None
    return since, until


@bp.get("/usage")
def list_usage() -> Response:
    """Per-invocation usage records (what each invocation was billed), oldest first."""
    since, until = _window()
    records = _cost().registry.list_usage(since, until, request.args.get("function") or None)
    return _json({"Usage": [usage_to_dict(r) for r in records]})


@bp.get("/instances")
def list_instances() -> Response:
    """Each instance's life (start, init end, end; device memory held): what a serverless
    platform that bills containers while alive would charge. Live ones have ``end_ts`` null."""
    since, until = _window()
    lives = _cost().instances(since, until, request.args.get("function") or None)
    return _json({"Instances": [asdict(i) for i in lives]})


@bp.get("/nodes")
def list_nodes() -> Response:
    """Each node session's metered device time (the live one up to now)."""
    since, until = _window()
    return _json({"Nodes": [{**asdict(n), "overhead_s": dict(n.overhead_s),
                             "keep_alive_by_function_s": dict(n.keep_alive_by_function_s)}
                            for n in _cost().nodes(since, until)]})
