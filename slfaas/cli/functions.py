"""``slfaas deploy | list | delete``: functions through the Lambda API (boto3)."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from slfaas.client import CliError, zip_adapter
from slfaas.cli.core import (boto_call, complete_function_name, endpoint_option, endpoint_url, examples,
                             output_option, print_json, ui)
from slfaas.cli.ui import Step, Ui, print_table

ROLE = "arn:aws:iam::000000000000:role/slfaas"
POLL_S = 0.5


@click.command("deploy", epilog=examples(
    "slfaas deploy support-bot --adapter ./my-lora",
    "slfaas deploy support-bot --adapter ./my-lora --base-model llama-7b --timeout 120",
    "slfaas deploy support-bot --adapter ./my-lora --no-wait -o json"))
@click.argument("name", shell_complete=complete_function_name)
@click.option("--adapter", required=True, metavar="DIR",
              help="directory with adapter_config.json + adapter_model.safetensors")
@click.option("--base-model", help="registered model name or model directory (default: the adapter's base)")
@click.option("--timeout", type=int, default=60, show_default=True, help="invocation timeout in seconds")
@click.option("--memory", type=int, default=2048, show_default=True, help="MemorySize in MB")
@click.option("--description")
@click.option("--no-wait", is_flag=True, help="do not wait until the function is Active")
@click.option("--wait-timeout-s", type=float, default=600.0, show_default=True)
@endpoint_option
@output_option
@click.pass_context
def deploy(ctx: click.Context, name: str, adapter: str, base_model: str | None, timeout: int, memory: int,
           description: str | None, no_wait: bool, wait_timeout_s: float, endpoint: str | None,
           output: str) -> None:
    """Create or update a function from a LoRA adapter directory.

    Zips the PEFT adapter, creates or updates the function and waits until it is Active (its
    backbone loaded on the node). Prints NAME, State and ARN (the whole configuration with
    -o json)."""
    out = ui(ctx)
    with out.step(f"zipping {adapter}", plain=False) as step:
        zip_bytes = zip_adapter(Path(adapter))
        step.done(f"zipped {adapter} ({len(zip_bytes) / 1e6:.2f} MB)")
    params: dict[str, Any] = {"Timeout": timeout, "MemorySize": memory}
    if description is not None:
        params["Description"] = description
    if base_model:
        params["Environment"] = {"Variables": {"SLFAAS_BASE_MODEL": base_model}}

    def run(client: Any) -> dict:
        _upload(client, out, name, zip_bytes, params)
        if no_wait:
            return client.get_function_configuration(FunctionName=name)
        with out.step("waiting for the function to become Active (backbone loading on the node)...") as step:
            cfg = _wait_active(client, name, wait_timeout_s, step)
            step.done(f"{name} is Active")
        return cfg

    cfg = boto_call(endpoint_url(ctx), run)
    if output == "json":
        print_json(cfg)
    else:
        click.echo(f"{cfg['FunctionName']}\t{cfg['State']}\t{cfg['FunctionArn']}")


def _upload(client: Any, out: Ui, name: str, zip_bytes: bytes, params: dict[str, Any]) -> None:
    try:
        client.get_function(FunctionName=name)
        exists = True
    except client.exceptions.ResourceNotFoundException:
        exists = False
    size = f"{len(zip_bytes) / 1e6:.2f} MB code zip"
    if not exists:
        with out.step(f"creating function {name} ({size})") as step:
            client.create_function(FunctionName=name, Runtime="slfaas-lora", Role=ROLE, Handler="slfaas.lora",
                                   Code={"ZipFile": zip_bytes}, **params)
            step.done(f"created {name} ({size})")
        return
    with out.step(f"updating function {name} ({size})") as step:
        client.update_function_code(FunctionName=name, ZipFile=zip_bytes)
        _wait_updated(client, name, step)
        client.update_function_configuration(FunctionName=name, **params)
        step.done(f"updated {name} ({size})")


def _wait_updated(client: Any, name: str, step: Step) -> None:
    while True:
        cfg = client.get_function_configuration(FunctionName=name)
        status = cfg.get("LastUpdateStatus")
        if status == "Failed":
            raise CliError(f"function {name} update failed: {cfg.get('LastUpdateStatusReason')}")
        if status != "InProgress":
            return
        step.update(f"code update {status}")
        time.sleep(POLL_S)


def _wait_active(client: Any, name: str, wait_timeout_s: float, step: Step) -> dict:
    t0 = time.monotonic()
    while True:
        cfg = client.get_function_configuration(FunctionName=name)
        if cfg["State"] == "Failed" or cfg.get("LastUpdateStatus") == "Failed":
            raise CliError(f"function {name} failed: {cfg.get('StateReason') or cfg.get('LastUpdateStatusReason')}")
        if cfg["State"] == "Active" and cfg.get("LastUpdateStatus") == "Successful":
            return cfg
        if time.monotonic() - t0 > wait_timeout_s:
            raise CliError(f"function {name} not Active after {wait_timeout_s} s (state {cfg['State']})")
        step.update(f"State {cfg['State']}, LastUpdateStatus {cfg.get('LastUpdateStatus')}")
        time.sleep(POLL_S)


@click.command("list", epilog=examples("slfaas list", "slfaas list -o json | jq -r '.Functions[].FunctionName'"))
@endpoint_option
@output_option
@click.pass_context
def list_functions(ctx: click.Context, endpoint: str | None, output: str) -> None:
    """List functions (every page of ListFunctions)."""
    def all_functions(client: Any) -> list[dict]:
        out: list[dict] = []
        for page in client.get_paginator("list_functions").paginate():
            out.extend(page["Functions"])
        return out

    fns = boto_call(endpoint_url(ctx), all_functions)
    if output == "json":
        print_json({"Functions": fns})
    elif not fns:
        click.echo("no functions deployed")
    else:
        print_table(["NAME", "STATE", "MEMORY", "TIMEOUT", "LAST MODIFIED"],
                    [[f["FunctionName"], f["State"], f["MemorySize"], f["Timeout"], f["LastModified"]] for f in fns],
                    right=("MEMORY", "TIMEOUT"))


@click.command("delete", epilog=examples("slfaas delete support-bot"))
@click.argument("name", shell_complete=complete_function_name)
@endpoint_option
@click.pass_context
def delete(ctx: click.Context, name: str, endpoint: str | None) -> None:
    """Delete a function (its versions, aliases and instances)."""
    boto_call(endpoint_url(ctx), lambda c: c.delete_function(FunctionName=name))
    click.echo(f"deleted {name}")
