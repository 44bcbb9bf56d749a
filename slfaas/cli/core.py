"""What every command shares: the root group's error handling, the endpoint and output options,
help examples, and boto3 calls turned into one-line errors."""
from __future__ import annotations

import json
import os
import sys
import traceback
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

import click

from slfaas.client import DEFAULT_ENDPOINT, CliError, api, endpoint_default, lambda_client, unreachable
from slfaas.cli.ui import Ui

F = TypeVar("F", bound=Callable[..., Any])
OUTPUTS = ("table", "json")
_NO_ARGS_IS_HELP: Any = getattr(click.exceptions, "NoArgsIsHelpError", ())  # click >= 8.2


@dataclass(frozen=True)
class Settings:
    """The root group's options, in ``ctx.obj`` for every command."""

    debug: bool = False
    quiet: bool = False

    @property
    def ui(self) -> Ui:
        return Ui(quiet=self.quiet)


def ui(ctx: click.Context) -> Ui:
    settings = ctx.find_object(Settings)
    return (settings or Settings()).ui


def _error_line(message: str) -> None:
    click.echo(f"slfaas: error: {' '.join(message.split())}", err=True)


class SlfaasGroup(click.Group):
    """The root command: errors become one line on stderr and a non-zero exit, never a
    traceback (unless ``--debug``), whether run as ``slfaas`` or through ``CliRunner``."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)  # in the order registered: the order of a user's work

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except KeyboardInterrupt:
            click.echo("", err=True)
            raise click.exceptions.Exit(130)
        except BrokenPipeError:
            # the reader went away (`slfaas logs fn | head`): stop quietly
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise click.exceptions.Exit(1)
        except Exception as exc:
            settings = ctx.find_object(Settings)
            if settings is not None and settings.debug:
                traceback.print_exc()
            if isinstance(exc, CliError):
                _error_line(str(exc))
            else:
                _error_line(f"{type(exc).__name__}: {exc} (--debug shows the traceback)")
            raise click.exceptions.Exit(1)

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        """Usage errors as one line too (exit 2); returns the exit code when not standalone."""
        code = 0
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
            code = rv if isinstance(rv, int) else 0
        except _NO_ARGS_IS_HELP as exc:  # a group without its command: its help, as click shows it
            exc.show()
            code = exc.exit_code
        except click.UsageError as exc:
            hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
            _error_line(exc.format_message() + hint)
            code = exc.exit_code
        except click.ClickException as exc:
            _error_line(exc.format_message())
            code = exc.exit_code
        except click.Abort:
            code = 130
        if standalone_mode:
            sys.exit(code)
        return code


def examples(*lines: str) -> str:
    """A help epilog; click keeps a paragraph that starts with \\b as written."""
    return "\b\nExamples:\n" + "\n".join(f"  {line}" for line in lines)


def endpoint_option(f: F) -> F:
    return click.option("--endpoint", metavar="URL", default=None,
                        help=f"slfaas server URL (default: $SLFAAS_ENDPOINT, else {DEFAULT_ENDPOINT})")(f)


def endpoint_url(ctx: click.Context) -> str:
    """``--endpoint`` of this command or of a group above it, then $SLFAAS_ENDPOINT, then the
    local default."""
    c: click.Context | None = ctx
    while c is not None:
        if c.params.get("endpoint"):
            return str(c.params["endpoint"])
        c = c.parent
    return endpoint_default()


def output_option(f: F) -> F:
    return click.option("-o", "--output", type=click.Choice(OUTPUTS), default="table", show_default=True,
                        help="table for people, json for scripts")(f)


def print_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, default=str))


def boto_call(url: str, fn: Callable[[Any], Any]) -> Any:
    """Run ``fn(lambda client)``; the AWS error or an unreachable server becomes a ``CliError``."""
    from botocore.exceptions import ClientError, ConnectionClosedError, EndpointConnectionError

    try:
        return fn(lambda_client(url))
    except (EndpointConnectionError, ConnectionClosedError) as exc:
        raise CliError(unreachable(url, exc.__class__.__name__))
    except ClientError as exc:
        err = exc.response.get("Error", {})
        raise CliError(f"{err.get('Code')}: {err.get('Message')}")


def complete_function_name(ctx: click.Context, _param: click.Parameter, incomplete: str) -> list[str]:
    """Shell completion of a function name: asks the server, quietly gives nothing if it cannot."""
    try:
        body = api(endpoint_url(ctx), "GET", "/2015-03-31/functions/", timeout_s=2)
    except (CliError, ValueError, OSError):
        return []
    return [f["FunctionName"] for f in body.get("Functions", []) if f["FunctionName"].startswith(incomplete)]
