"""Reading command lines the way users find them (help examples, the README) and parsing them
with the CLI without running them."""
from __future__ import annotations

import re
import shlex

import click

from slfaas.cli.main import cli
from tests.conftest import ROOT

README = ROOT / "README.md"


def parse_only(args: list[str]) -> click.Context:
    """Parse a command line down to its leaf command without running it."""
    ctx = cli.make_context("slfaas", args)
    while isinstance(ctx.command, click.Group):
        # what the group leaves for its subcommand (click >= 8.2 keeps the name apart)
        protected = ctx._protected_args if hasattr(ctx, "_protected_args") else ctx.protected_args
        rest = [*protected, *ctx.args]
        if not rest:
            break
        name, cmd, rest = ctx.command.resolve_command(ctx, rest)
        assert cmd is not None and name is not None
        ctx = cmd.make_context(name, rest, parent=ctx)
    return ctx


def example_lines(cmd: click.Command) -> list[str]:
    assert cmd.epilog and "Examples:" in cmd.epilog
    text = cmd.epilog.split("Examples:", 1)[1].replace("\\\n", " ")
    return [ln.strip() for ln in text.splitlines() if ln.strip()]


def slfaas_argv(line: str) -> list[str]:
    """The slfaas part of an example (a pipeline, a comment, a trailing & aside)."""
    words = shlex.split(line, comments=True)
    if "slfaas" not in words:   # eval "$(_SLFAAS_COMPLETE=bash_source slfaas)"
        return []
    words = words[words.index("slfaas") + 1:]
    return words[:words.index("|")] if "|" in words else [w for w in words if w != "&"]


def code_block_commands(text: str) -> list[str]:
    """The lines of ```bash blocks that run slfaas (continuation lines joined)."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip().startswith("slfaas "):
                out.append(line.strip())
    return out


def quickstart_commands(text: str) -> list[str]:
    block = text.split("<!-- cli-quickstart -->", 1)[1].split("<!-- /cli-quickstart -->", 1)[0]
    return code_block_commands(block)
