"""``slfaas cost``: cost reports and budgets, from a running server or straight from a data dir."""
from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Any

from slfaas.cli.client import CliError, api, endpoint_default
from slfaas.errors import SlfaasError

GROUPS = ("function", "version", "hour", "day")
FORMATS = ("table", "csv", "json", "html")


def add_parser(sub: Any) -> None:
    c = sub.add_parser("cost", help="cost reports and budgets (pay-as-you-go GPU-seconds)",
                       description="What each function cost (billed view), what the node spent (node view), the "
                                   "platform overhead between them, what no backbone sharing or a serverful "
                                   "deployment would have cost, and budgets.")
    csub = c.add_subparsers(dest="cost_cmd", metavar="ACTION", required=True)

    def source(p: argparse.ArgumentParser) -> None:
        p.add_argument("--endpoint", default=None,
                       help=f"server URL (default: $SLFAAS_ENDPOINT or {endpoint_default()})")
        p.add_argument("--data-dir", default=None,
                       help="read the registry in this data dir directly (no server needed; it must not be a "
                            "server's data dir that another database URL points elsewhere)")

    r = csub.add_parser("report", help="cost report over a time window",
                        description="Cost report. Times: ISO (2026-11-23, 2026-11-23T14:00Z), epoch seconds, or a "
                                    "duration ago (30m, 6h, 7d).")
    source(r)
    r.add_argument("--since", help="start of the window (default: the first record)")
    r.add_argument("--until", help="end of the window (default: now)")
    r.add_argument("--function", help="only this function")
    r.add_argument("--group-by", default="function", choices=GROUPS, help="(default %(default)s)")
    r.add_argument("--format", default="table", choices=FORMATS, help="(default %(default)s)")
    r.add_argument("--prices", help="with --data-dir: a TOML/YAML price sheet for the counterfactuals")
    r.add_argument("-o", "--output", help="write to this file instead of stdout (e.g. report.html)")
    r.set_defaults(func=cmd_cost_report)

    b = csub.add_parser("budget", help="set, list or delete spending budgets")
    bsub = b.add_subparsers(dest="budget_cmd", metavar="ACTION", required=True)
    bs = bsub.add_parser("set", help="create or change a budget",
                         description="A budget warns (server log, function log, report) when the spend or its "
                                     "projection over the period crosses 80 %% and 100 %%; a --hard budget also "
                                     "refuses invocations (TooManyRequestsException, Reason BudgetExceeded) "
                                     "once its spend reaches the limit, until the period ends.")
    bs.add_argument("name")
    bs.add_argument("--usd", required=True, help="limit in USD per period, e.g. 25 or 0.50")
    bs.add_argument("--period", default="month", choices=["day", "month"], help="UTC calendar (default %(default)s)")
    bs.add_argument("--hard", action="store_true", help="throttle invocations once the limit is spent")
    bs.add_argument("--function", help="only this function's spend counts (default: all functions)")
    bs.add_argument("--endpoint", default=None, help="server URL")
    bs.set_defaults(func=cmd_budget_set)
    bl = bsub.add_parser("list", help="budgets with their spend and projection")
    bl.add_argument("--endpoint", default=None, help="server URL")
    bl.set_defaults(func=cmd_budget_list)
    bd = bsub.add_parser("delete", help="delete a budget")
    bd.add_argument("name")
    bd.add_argument("--endpoint", default=None, help="server URL")
    bd.set_defaults(func=cmd_budget_delete)


def _emit(text: str, output: str | None) -> None:
    if output:
        Path(output).write_text(text, encoding="utf-8")
        print(f"wrote {output}", file=sys.stderr)
    else:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")


def cmd_cost_report(args: argparse.Namespace) -> int:
    if args.data_dir and args.endpoint:
        raise CliError("give --endpoint or --data-dir, not both")
    if args.prices and not args.data_dir:
        raise CliError("--prices applies with --data-dir; a server uses the sheet it was started with (--prices)")
    if args.data_dir:
        _emit(_local_report(args), args.output)
        return 0
    query = {k: v for k, v in (("since", args.since), ("until", args.until), ("function", args.function),
                               ("group_by", args.group_by), ("format", args.format)) if v}
    body = api(args.endpoint or endpoint_default(), "GET", "/slfaas/v1/cost/report?" + urllib.parse.urlencode(query))
    _emit(json.dumps(body, indent=2) if isinstance(body, (dict, list)) else str(body), args.output)
    return 0


def _local_report(args: argparse.Namespace) -> str:
    from slfaas.billing.prices import default_prices, load_prices
    from slfaas.billing.report_html import render_html
    from slfaas.billing.reports import render_csv, render_json, render_table
    from slfaas.billing.service import CostService, parse_when
    from slfaas.faas.registry import Registry

    data_dir = Path(args.data_dir).expanduser()
    if not (data_dir / "registry.db").is_file():
        raise CliError(f"no registry in {data_dir} (registry.db): is it a slfaas data dir?")
    registry = Registry.for_data_dir(data_dir)
    try:
        sheet = load_prices(Path(args.prices)) if args.prices else default_prices()
        now = time.time()
        since = parse_when(args.since, now) if args.since else None
        until = parse_when(args.until, now) if args.until else None
        if since is not None and until is not None and since >= until:
            raise CliError("--since must be before --until")
        rep = CostService(registry, sheet).report(since, until, args.group_by, args.function)
    except SlfaasError as exc:
        raise CliError(str(exc))
    finally:
        registry.close()
    render = {"table": render_table, "csv": render_csv, "json": render_json, "html": render_html}[args.format]
    return render(rep)


def cmd_budget_set(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"LimitUsd": args.usd, "Period": args.period, "Hard": args.hard}
    if args.function:
        body["FunctionName"] = args.function
    out = api(args.endpoint or endpoint_default(), "PUT", f"/slfaas/v1/cost/budgets/{urllib.parse.quote(args.name)}",
              body)
    print(out["Message"])
    return 0


def cmd_budget_list(args: argparse.Namespace) -> int:
    out = api(args.endpoint or endpoint_default(), "GET", "/slfaas/v1/cost/budgets")
    if not out["Budgets"]:
        print("no budgets (slfaas cost budget set NAME --usd X)")
    for b in out["Budgets"]:
        print(f"[{b['Level']}] {b['Message']}")
    return 0


def cmd_budget_delete(args: argparse.Namespace) -> int:
    api(args.endpoint or endpoint_default(), "DELETE", f"/slfaas/v1/cost/budgets/{urllib.parse.quote(args.name)}")
    print(f"deleted budget {args.name}")
    return 0
