"""``slfaas cost``: cost reports and budgets, from a running server or straight from a data dir."""
from __future__ import annotations

import json
import time
import urllib.parse
from pathlib import Path
from typing import Any

import click

from slfaas.client import CliError, api
from slfaas.cli.core import endpoint_option, endpoint_url, examples, output_option, print_json, ui
from slfaas.cli.ui import print_table
from slfaas.errors import SlfaasError

GROUPS = ("function", "version", "hour", "day")
FORMATS = ("table", "csv", "json", "html")
WHEN = "ISO (2026-11-23, 2026-11-23T14:00Z), epoch seconds, or a duration ago (30m, 6h, 7d)"


@click.group("cost", epilog=examples(
    "slfaas cost report --since 1d --group-by function",
    "slfaas cost report --format html -o cost.html",
    "slfaas cost report --data-dir ~/.slfaas --since 7d      # no server needed",
    "slfaas cost budget set team-a --usd 25 --period month --hard"))
def cost() -> None:
    """Cost reports and budgets (pay-as-you-go GPU-seconds).

    What each function cost (billed view), what the node spent (node view), the platform
    overhead between them, what no backbone sharing or a serverful deployment would have
    cost, and budgets."""


@cost.command("report", epilog=examples(
    "slfaas cost report",
    "slfaas cost report --since 6h --until 1h --group-by hour",
    "slfaas cost report --function support-bot --format csv -o cost.csv",
    "slfaas cost report --format json | jq .totals"))
@click.option("--endpoint", metavar="URL", default=None,
              help="server URL (default: $SLFAAS_ENDPOINT, else http://127.0.0.1:9000)")
@click.option("--data-dir", default=None,
              help="read the registry in this data dir directly (no server needed; it must not be a server's data "
                   "dir that another database URL points elsewhere)")
@click.option("--database-url", default=None,
              help="read the registry at this SQLAlchemy URL directly (a server started with --database-url, "
                   "e.g. postgresql+psycopg://...; no server needed)")
@click.option("--since", metavar="WHEN", help=f"start of the window (default: the first record): {WHEN}")
@click.option("--until", metavar="WHEN", help="end of the window (default: now)")
@click.option("--function", help="only this function")
@click.option("--group-by", type=click.Choice(GROUPS), default="function", show_default=True)
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True)
@click.option("--prices", metavar="FILE", help="with --data-dir: a TOML/YAML price sheet for the counterfactuals")
@click.option("-o", "--output", metavar="FILE", help="write to this file instead of stdout (e.g. report.html)")
@click.pass_context
def report(ctx: click.Context, endpoint: str | None, data_dir: str | None, database_url: str | None,
           since: str | None, until: str | None, function: str | None, group_by: str, fmt: str, prices: str | None,
           output: str | None) -> None:
    """Cost report over a time window."""
    if sum(1 for v in (endpoint, data_dir, database_url) if v) > 1:
        raise CliError("give one of --endpoint, --data-dir or --database-url")
    local = data_dir or database_url
    if prices and not local:
        raise CliError("--prices applies with --data-dir or --database-url; a server uses the sheet it was started "
                       "with (--prices)")
    with ui(ctx).step("building the cost report from the usage records", plain=False) as step:
        if local:
            text = _local_report(Path(data_dir).expanduser() if data_dir else None, database_url, prices, since,
                                 until, group_by, function, fmt)
        else:
            query = {k: v for k, v in (("since", since), ("until", until), ("function", function),
                                       ("group_by", group_by), ("format", fmt)) if v}
            body = api(endpoint_url(ctx), "GET", "/slfaas/v1/cost/report?" + urllib.parse.urlencode(query))
            text = json.dumps(body, indent=2) if isinstance(body, (dict, list)) else str(body)
        step.done("cost report ready")
    if output:
        Path(output).write_text(text, encoding="utf-8")
        click.echo(f"wrote {output}", err=True)
    else:
        click.echo(text if not text.endswith("\n") else text[:-1])


def _local_report(data_dir: Path | None, database_url: str | None, prices: str | None, since: str | None,
                  until: str | None, group_by: str, function: str | None, fmt: str) -> str:
    from slfaas.billing.prices import default_prices, load_prices
    from slfaas.billing.report_html import render_html
    from slfaas.billing.report_render import render_csv, render_json, render_table
    from slfaas.billing.service import CostService, parse_when
    from slfaas.faas.registry import Registry

    if data_dir is not None and not (data_dir / "registry.db").is_file():
        raise CliError(f"no registry in {data_dir} (registry.db): is it a slfaas data dir?")
    try:
        registry = Registry.for_data_dir(data_dir) if data_dir is not None else Registry(str(database_url))
    except Exception as exc:   # a bad URL, a missing driver, a server that does not answer
        raise CliError(f"cannot open the registry at {database_url}: {str(exc).splitlines()[0]}") from None
    try:
        sheet = load_prices(Path(prices)) if prices else default_prices()
        now = time.time()
        since_ts = parse_when(since, now) if since else None
        until_ts = parse_when(until, now) if until else None
        if since_ts is not None and until_ts is not None and since_ts >= until_ts:
            raise CliError("--since must be before --until")
        rep = CostService(registry, sheet).report(since_ts, until_ts, group_by, function)
    except SlfaasError as exc:
        raise CliError(str(exc))
    finally:
        registry.close()
    render = {"table": render_table, "csv": render_csv, "json": render_json, "html": render_html}[fmt]
    return render(rep)


@cost.group("budget", epilog=examples(
    "slfaas cost budget set team-a --usd 25 --period month --hard",
    "slfaas cost budget set bot-daily --usd 0.50 --period day --function support-bot",
    "slfaas cost budget list -o json",
    "slfaas cost budget delete team-a"))
def budget() -> None:
    """Set, list or delete spending budgets."""


@budget.command("set", epilog=examples("slfaas cost budget set team-a --usd 25 --period month --hard"))
@click.argument("name")
@click.option("--usd", required=True, help="limit in USD per period, e.g. 25 or 0.50")
@click.option("--period", type=click.Choice(["day", "month"]), default="month", show_default=True,
              help="UTC calendar")
@click.option("--hard", is_flag=True, help="throttle invocations once the limit is spent")
@click.option("--function", help="only this function's spend counts (default: all functions)")
@endpoint_option
@click.pass_context
def budget_set(ctx: click.Context, name: str, usd: str, period: str, hard: bool, function: str | None,
               endpoint: str | None) -> None:
    """Create or change a budget. A budget warns (server log, function log, report) when the
    spend or its projection over the period crosses 80 % and 100 %; a --hard budget also
    refuses invocations (TooManyRequestsException, Reason BudgetExceeded) once its spend
    reaches the limit, until the period ends."""
    body: dict[str, Any] = {"LimitUsd": usd, "Period": period, "Hard": hard}
    if function:
        body["FunctionName"] = function
    out = api(endpoint_url(ctx), "PUT", f"/slfaas/v1/cost/budgets/{urllib.parse.quote(name, safe='')}", body)
    click.echo(out["Message"])


@budget.command("list", epilog=examples("slfaas cost budget list", "slfaas cost budget list -o json"))
@endpoint_option
@output_option
@click.pass_context
def budget_list(ctx: click.Context, endpoint: str | None, output: str) -> None:
    """Budgets with their spend and projection."""
    out = api(endpoint_url(ctx), "GET", "/slfaas/v1/cost/budgets")
    if output == "json":
        print_json(out)
    elif not out["Budgets"]:
        click.echo("no budgets (slfaas cost budget set NAME --usd X)")
    else:
        print_table(["NAME", "LEVEL", "SPENT USD", "PROJECTED USD", "LIMIT USD", "PERIOD", "HARD", "FUNCTION"],
                    [[b["Name"], b["Level"], b["SpentUsd"], b["ProjectedUsd"], b["LimitUsd"], b["Period"],
                      "yes" if b["Hard"] else "no", b["FunctionName"] or "(all)"] for b in out["Budgets"]],
                    right=("SPENT USD", "PROJECTED USD", "LIMIT USD"))
        for b in out["Budgets"]:
            click.echo(f"[{b['Level']}] {b['Message']}")


@budget.command("delete", epilog=examples("slfaas cost budget delete team-a"))
@click.argument("name")
@endpoint_option
@click.pass_context
def budget_delete(ctx: click.Context, name: str, endpoint: str | None) -> None:
    """Delete a budget."""
    api(endpoint_url(ctx), "DELETE", f"/slfaas/v1/cost/budgets/{urllib.parse.quote(name, safe='')}")
    click.echo(f"deleted budget {name}")
