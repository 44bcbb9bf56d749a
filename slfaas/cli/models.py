"""``slfaas models``: names for local base model directories (``--base-model NAME``)."""
from __future__ import annotations

import urllib.parse
from pathlib import Path

import click

from slfaas.client import api
from slfaas.cli.core import endpoint_option, endpoint_url, examples, output_option, print_json
from slfaas.cli.ui import print_table


@click.group("models", invoke_without_command=True, epilog=examples(
    "slfaas models add llama-7b /models/Llama-2-7b-hf",
    "slfaas models                                 # = slfaas models list",
    "slfaas models list -o json",
    "slfaas models remove llama-7b"))
@endpoint_option
@click.pass_context
def models(ctx: click.Context, endpoint: str | None) -> None:
    """Manage named base models.

    A name for a local Hugging Face model directory, used by `deploy --base-model NAME` or
    an adapter's base_model_name_or_path. Without an action: list."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(list_models, output="table")


@models.command("add", epilog=examples("slfaas models add llama-7b /models/Llama-2-7b-hf"))
@click.argument("name")
@click.argument("path")
@endpoint_option
@click.pass_context
def add_model(ctx: click.Context, name: str, path: str, endpoint: str | None) -> None:
    """Register NAME for a local Hugging Face model directory PATH (nothing is copied or downloaded)."""
    m = api(endpoint_url(ctx), "POST", "/slfaas/v1/models", {"Name": name, "Path": str(Path(path).resolve())})
    click.echo(f"{m['Name']}\t{m['Path']}")


@models.command("remove", epilog=examples("slfaas models remove llama-7b"))
@click.argument("name")
@endpoint_option
@click.pass_context
def remove_model(ctx: click.Context, name: str, endpoint: str | None) -> None:
    """Forget a registered model name (the directory stays)."""
    api(endpoint_url(ctx), "DELETE", f"/slfaas/v1/models/{urllib.parse.quote(name, safe='')}")
    click.echo(f"removed {name}")


@models.command("list", epilog=examples("slfaas models list", "slfaas models list -o json"))
@endpoint_option
@output_option
@click.pass_context
def list_models(ctx: click.Context, output: str, endpoint: str | None = None) -> None:
    """List registered models."""
    found = api(endpoint_url(ctx), "GET", "/slfaas/v1/models")["Models"]
    if output == "json":
        print_json({"Models": found})
    elif not found:
        click.echo("no models registered (slfaas models add NAME PATH)")
    else:
        print_table(["NAME", "PATH"], [[m["Name"], m["Path"]] for m in found])
