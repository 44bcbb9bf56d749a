"""The ``slfaas`` command line (click): one module per command group, registered here."""
from __future__ import annotations

import sys

import click

import slfaas
from slfaas.cli.core import Settings, SlfaasGroup, endpoint_option, examples
from slfaas.cli.bench import bench
from slfaas.cli.cost import cost
from slfaas.cli.demo import demo
from slfaas.cli.functions import delete, deploy, list_functions
from slfaas.cli.invoke import invoke
from slfaas.cli.logs import logs
from slfaas.cli.models import models
from slfaas.cli.node import node
from slfaas.cli.server_cmd import server

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 110}


@click.group("slfaas", cls=SlfaasGroup, context_settings=CONTEXT_SETTINGS, epilog=examples(
    "slfaas server &                                  # control plane + local node on 127.0.0.1:9000",
    "slfaas deploy support-bot --adapter ./my-lora",
    "slfaas invoke support-bot --prompt 'Hello' --stream",
    "slfaas logs support-bot --follow",
    "slfaas node status --watch",
    "eval \"$(_SLFAAS_COMPLETE=bash_source slfaas)\"     # shell completion (zsh_source, fish_source)"))
@click.version_option(slfaas.__version__, "--version", prog_name="slfaas", message="%(prog)s %(version)s")
@click.option("--debug", is_flag=True, envvar="SLFAAS_DEBUG", help="show an error's traceback ($SLFAAS_DEBUG)")
@click.option("-q", "--quiet", is_flag=True, help="no progress output on stderr")
@endpoint_option
@click.pass_context
def cli(ctx: click.Context, debug: bool, quiet: bool, endpoint: str | None) -> None:
    """Serverless LoRA functions on one shared LLM backbone, behind an AWS-Lambda-compatible
    API. Client commands talk to the server at --endpoint, else $SLFAAS_ENDPOINT, else
    http://127.0.0.1:9000."""
    ctx.obj = Settings(debug=debug, quiet=quiet)


for command in (server, deploy, invoke, list_functions, delete, logs, models, cost, node, bench, demo):
    cli.add_command(command)


def main(argv: list[str] | None = None) -> int:
    """The console script's entry point; returns the exit code (errors: one line on stderr)."""
    return int(cli.main(args=argv, prog_name="slfaas", standalone_mode=False))


if __name__ == "__main__":
    sys.exit(main())
