"""``slfaas node``: the node's status (once or live), backbone verification, the Docker image."""
from __future__ import annotations

import json
import time
from pathlib import Path

import click

from slfaas.client import CliError, api
from slfaas.cli.core import endpoint_option, endpoint_url, examples, output_option, print_json, ui
from slfaas.cli.node_view import print_status, renderable, snapshot
from slfaas.cli.ui import stdout_console


@click.group("node", invoke_without_command=True, epilog=examples(
    "slfaas node                      # = slfaas node status",
    "slfaas node status --watch",
    "slfaas node verify",
    "slfaas node build-image"))
@endpoint_option
@click.pass_context
def node(ctx: click.Context, endpoint: str | None) -> None:
    """Node status, backbone integrity, the Docker runtime image.

    Status: backbones, instances, pools, GPU memory and recent invocations. Without an
    action: status."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(status)


@node.command("status", epilog=examples(
    "slfaas node status",
    "slfaas node status --watch --interval-s 1",
    "slfaas node status -o json | jq '.Instances[] | {function_name, state}'",
    "slfaas node status --watch -o json      # one JSON document per line, per interval"))
@click.option("-w", "--watch", is_flag=True, help="keep the view up to date (Ctrl-C stops)")
@click.option("--interval-s", type=click.FloatRange(min=0.1), default=2.0, show_default=True,
              help="with --watch: seconds between refreshes")
@click.option("--invocations", type=click.IntRange(0, 1000), default=10, show_default=True,
              help="how many recent invocations to show")
@endpoint_option
@output_option
@click.pass_context
def status(ctx: click.Context, watch: bool = False, interval_s: float = 2.0, invocations: int = 10,
           endpoint: str | None = None, output: str = "table") -> None:
    """Backbones and their memory, instances per function with state and idle time, pools,
    GPU memory, and the recent invocations, cold or warm, with what each cost. The JSON is the
    node's own report (GET /slfaas/v1/node) plus RecentInvocations."""
    url = endpoint_url(ctx)
    if not watch:
        report = snapshot(url, invocations)
        if output == "json":
            print_json(report)
        else:
            print_status(report, time.time())
        return
    try:
        if output == "json":
            while True:
                click.echo(json.dumps(snapshot(url, invocations), default=str))
                time.sleep(interval_s)
        console = stdout_console()
        if not console.is_terminal:
            while True:
                print_status(snapshot(url, invocations), time.time())
                click.echo("")
                time.sleep(interval_s)
        from rich.live import Live

        with Live(renderable(snapshot(url, invocations), time.time()), console=console, auto_refresh=False,
                  screen=False) as live:
            while True:
                time.sleep(interval_s)
                live.update(renderable(snapshot(url, invocations), time.time()), refresh=True)
    except KeyboardInterrupt:  # the way a watch ends
        pass


@node.command("verify", epilog=examples("slfaas node verify", "slfaas node verify -o json"))
@endpoint_option
@output_option
@click.pass_context
def verify(ctx: click.Context, endpoint: str | None, output: str) -> None:
    """Check every backbone's bytes now; a mismatch stops its instances and reloads it (exit 1)."""
    checks = api(endpoint_url(ctx), "POST", "/slfaas/v1/node/verify")["Checks"]
    bad = [c for c in checks if not c["ok"]]
    if output == "json":
        print_json({"Checks": checks})
    elif not checks:
        click.echo("no backbone loaded")
    for c in checks if output == "table" else ():
        if c["ok"]:
            click.echo(f"OK        {c['model_path']} ({c['elapsed_ms']:.1f} ms)")
        else:
            click.echo(f"MISMATCH  {c['model_path']}: {len(c['bad_tensors'])} tensor(s) changed "
                       f"({', '.join(c['bad_tensors'][:4])}...); stopped {len(c['stopped_instances'])} "
                       f"instance(s), reloaded in {c['reload_s']:.2f} s")
    if bad:
        raise click.exceptions.Exit(1)


def _build_args(_ctx: click.Context, _param: click.Parameter, values: tuple[str, ...]) -> dict[str, str]:
    if any("=" not in v for v in values):
        raise click.BadParameter("expected NAME=VALUE")
    return dict(v.split("=", 1) for v in values)


def _excludes(_ctx: click.Context, _param: click.Parameter, values: tuple[str, ...]) -> tuple[str, ...]:
    from slfaas.gpu_node.sandboxes.host_image import normalize_pattern

    try:
        return tuple(normalize_pattern(v) for v in values)
    except ValueError as exc:
        raise click.BadParameter(str(exc).split(": ", 1)[1])


@node.command("build-image", epilog=examples(
    "slfaas node build-image                    # registry-free, about a minute, then cached",
    "slfaas node build-image --check            # exit 1 unless the image exists and is current",
    "slfaas node build-image --from-host        # no network at all: this host's own files",
    "slfaas node build-image --from-host --exclude 'usr/lib/*/libav*' --tag slfaas/runtime:host",
    "slfaas node build-image --dockerfile docker/Dockerfile.runtime --tag slfaas/runtime:cpu",
    "slfaas node build-image --dockerfile docker/Dockerfile.runtime --tag slfaas/runtime:cuda \\",
    "    --base-image nvidia/cuda:12.4.1-runtime-ubuntu22.04"))
@click.option("--tag", default="slfaas/runtime:local", show_default=True, help="image name")
@click.option("--suite", help="Debian release to debootstrap (default: the host's, else bookworm)")
@click.option("--mirror", help="Debian mirror (default $SLFAAS_DEBIAN_MIRROR or http://deb.debian.org/debian)")
@click.option("--cache-dir", default=str(Path("~/.cache/slfaas/images").expanduser()), show_default=True,
              help="where the base rootfs tarball is kept")
@click.option("--rebuild", is_flag=True, help="debootstrap again even if a cached rootfs exists")
@click.option("--check", is_flag=True, help="only check that the image exists and is current (exit 1 if not)")
@click.option("--from-host", is_flag=True,
              help="make the image from this host's /etc and /usr/{bin,sbin,lib,lib64} instead of debootstrap "
                   "(no network, no registry); with --check: accept only such an image")
@click.option("--exclude", "excludes", multiple=True, metavar="PATTERN", callback=_excludes,
              help="with --from-host: also leave out paths matching this glob, relative to / (repeatable)")
@click.option("--dockerfile", help="build this Dockerfile instead (context: the repository root)")
@click.option("--base-image", help="with --dockerfile: the BASE_IMAGE build argument")
@click.option("--build-arg", "build_args", multiple=True, metavar="NAME=VALUE", callback=_build_args,
              help="with --dockerfile (repeatable)")
@click.option("--build-network", help="with --dockerfile: network for RUN steps (e.g. host)")
@click.pass_context
def build_image(ctx: click.Context, tag: str, suite: str | None, mirror: str | None, cache_dir: str, rebuild: bool,
                check: bool, from_host: bool, excludes: tuple[str, ...], dockerfile: str | None,
                base_image: str | None, build_args: dict[str, str], build_network: str | None) -> None:
    """Build the Docker runtime image for `server --sandbox docker` (no registry needed).

    Without --dockerfile: debootstrap a minimal Debian of the host's release (cached under
    --cache-dir) and `docker import` it as a runtime image that runs the node's own Python
    mounted read-only. With --from-host (no network at all, e.g. GPU hosts): the same kind
    of image, made in seconds from this host's own /etc and /usr, without what a Python+torch
    runtime never needs (JVMs, compilers, LLVM, static libraries ...; --exclude adds more), the
    host's secrets (shadow, ssh host keys, private keys) or the node's Python (mounted at run
    time). --check accepts an image of either recipe, a --from-host one only if made on this OS
    release (later package updates go unnoticed: rebuild after upgrading the host). With
    --dockerfile docker/Dockerfile.runtime: a self-contained image (needs a registry / PyPI),
    e.g. --base-image nvidia/cuda:12.4.1-runtime-ubuntu22.04 for GPUs."""
    from slfaas.gpu_node.sandboxes.docker import DockerUnavailable
    from slfaas.gpu_node.sandboxes.docker_image import ImageBuildError, build_dockerfile_image, build_local_image

    if from_host and (dockerfile or suite or mirror):
        raise click.UsageError("--from-host cannot be combined with --dockerfile, --suite or --mirror", ctx)
    if excludes and not from_host:
        raise click.UsageError("--exclude needs --from-host", ctx)
    try:
        if check:
            from slfaas.gpu_node.sandboxes.docker_image import image_problem

            problem = image_problem(tag, suite, from_host=True if from_host else None)
            if problem:
                raise CliError(problem)
            click.echo(f"{tag} is ready")
            return
        with ui(ctx).step(f"building {tag}") as step:
            if from_host:
                from slfaas.gpu_node.sandboxes.host_image import build_host_image

                build_host_image(tag, excludes, progress=step.note)
            elif dockerfile:
                if base_image:
                    build_args = {**build_args, "BASE_IMAGE": base_image}
                build_dockerfile_image(Path(dockerfile), tag, build_args, build_network, progress=step.note)
            else:
                build_local_image(tag, suite=suite, mirror=mirror, cache_dir=Path(cache_dir), rebuild=rebuild,
                                  progress=step.note)
            step.done(f"built {tag}")
    except (DockerUnavailable, ImageBuildError, OSError, ValueError) as exc:
        raise CliError(f"build-image: {exc}")
    click.echo(tag)
