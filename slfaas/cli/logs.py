"""``slfaas logs``: a function's log (its instances' output and the START/END/REPORT lines),
its tail, everything since a time, or followed like ``tail -f``."""
from __future__ import annotations

import sys
import time
import urllib.parse

import click

from slfaas.client import CliError, api_request
from slfaas.cli.core import complete_function_name, endpoint_option, endpoint_url, examples
from slfaas.faas.log_tail import LOG_OFFSET_HEADER


def read_log(url: str, name: str, max_bytes: int, offset: int | None = None,
             since: str | None = None) -> tuple[str, int]:
    """One read: the text and the offset to continue from. Neither ``offset`` nor ``since``:
    the last ``max_bytes`` of the log."""
    query: dict[str, object] = {"max_bytes": max_bytes}
    if offset is not None:
        query["offset"] = offset
    if since:
        query["since"] = since
    resp = api_request(url, "GET", f"/slfaas/v1/functions/{urllib.parse.quote(name, safe='')}/logs?"
                       + urllib.parse.urlencode(query))
    headers = {k.lower(): v for k, v in resp.headers.items()}
    try:
        next_offset = int(headers[LOG_OFFSET_HEADER.lower()])
    except (KeyError, ValueError):
        raise CliError(f"the server at {url} cannot be followed (no {LOG_OFFSET_HEADER} header): is it an older "
                       f"slfaas?") from None
    return resp.body or "", next_offset


def _write(text: str) -> None:
    if text:
        sys.stdout.write(text)
        sys.stdout.flush()


@click.command("logs", epilog=examples(
    "slfaas logs support-bot                      # the last 256 KiB",
    "slfaas logs support-bot --since 10m          # everything from the last 10 minutes",
    "slfaas logs support-bot --follow             # the tail, then new lines as written (Ctrl-C stops)",
    "slfaas logs support-bot -f --since 2026-11-23T14:00Z"))
@click.argument("name", shell_complete=complete_function_name)
@click.option("--max-bytes", type=click.IntRange(min=1), default=256 * 1024, show_default=True,
              help="tail size; with --since or --follow, the most read per request")
@click.option("--since", metavar="WHEN",
              help="start at this time: a duration ago (30s, 10m, 2h, 1d), an ISO date/time (UTC unless it "
                   "says otherwise) or epoch seconds")
@click.option("-f", "--follow", is_flag=True, help="keep printing lines as they are written (Ctrl-C stops)")
@click.option("--interval-s", type=click.FloatRange(min=0.05), default=1.0, show_default=True,
              help="with --follow: seconds between polls")
@endpoint_option
@click.pass_context
def logs(ctx: click.Context, name: str, max_bytes: int, since: str | None, follow: bool, interval_s: float,
         endpoint: str | None) -> None:
    """Print or follow a function's logs.

    Its instances' stdout/stderr and the node's START/END/REPORT lines, each stamped (UTC)
    and tagged with the instance."""
    url = endpoint_url(ctx)
    text, offset = read_log(url, name, max_bytes, since=since)
    _write(text)
    if since:  # everything since then, page by page, until caught up
        while text:
            text, offset = read_log(url, name, max_bytes, offset=offset)
            _write(text)
    if not follow:
        return
    try:
        while True:
            time.sleep(interval_s)
            text, offset = read_log(url, name, max_bytes, offset=offset)
            _write(text)
    except KeyboardInterrupt:  # the way a follow ends
        click.echo("", err=True)
