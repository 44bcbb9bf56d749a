"""Every command's parsing and errors through click's CliRunner (no server: a dead endpoint),
the examples in every --help, the endpoint's precedence, --debug, and shell completion."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import click
import pytest
from click.testing import CliRunner, Result

from slfaas.cli.core import endpoint_url
from slfaas.cli.main import cli
from tests.cli._util import example_lines, parse_only, slfaas_argv

DEAD = "http://127.0.0.1:9"  # the discard port: nothing listens there


def run(*args: str, env: dict[str, str] | None = None, stdin: str | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), prog_name="slfaas", env=env, input=stdin)


def error_line(result: Result) -> str:
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("slfaas: error: "), result.stderr
    assert "Traceback" not in result.stderr
    return lines[-1]


def all_commands(group: click.Group = cli, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    for name, cmd in group.commands.items():
        yield path + (name,), cmd
        if isinstance(cmd, click.Group):
            yield from all_commands(cmd, path + (name,))


COMMANDS = list(all_commands())


@pytest.mark.parametrize("path, cmd", [((), cli)] + COMMANDS, ids=lambda v: " ".join(v) if isinstance(v, tuple) else "")
def test_every_command_has_help_with_examples_that_parse(path: tuple[str, ...], cmd: click.Command) -> None:
    result = run(*path, "--help")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"Usage: {' '.join(('slfaas',) + path)}")
    assert "Examples:" in result.stdout
    lines = example_lines(cmd)
    assert lines
    parsed = 0
    for line in lines:
        argv = slfaas_argv(line)
        if not argv:
            continue
        ctx = parse_only(argv)
        assert ctx.command_path.startswith(" ".join(("slfaas",) + path)), (line, ctx.command_path)
        parsed += 1
    assert parsed, lines


@pytest.mark.parametrize("argv, message", [
    (["deploy"], "Missing argument 'NAME'"),
    (["deploy", "fn"], "Missing option '--adapter'"),
    (["deploy", "fn", "--adapter", "x", "--timeout", "soon"], "'soon' is not a valid integer"),
    (["invoke"], "Missing argument 'NAME'"),
    (["invoke", "fn", "--max-tokens", "many"], "is not a valid integer"),
    (["list", "-o", "xml"], "'xml' is not one of 'table', 'json'"),
    (["list", "extra"], "Got unexpected extra argument (extra)"),
    (["delete"], "Missing argument 'NAME'"),
    (["logs", "fn", "--max-bytes", "0"], "0 is not in the range x>=1"),
    (["logs", "fn", "--interval-s", "0"], "is not in the range x>=0.05"),
    (["models", "add", "only-a-name"], "Missing argument 'PATH'"),
    (["models", "frob"], "No such command 'frob'"),
    (["node", "status", "--invocations", "-1"], "is not in the range 0<=x<=1000"),
    (["node", "status", "-o", "yaml"], "'yaml' is not one of"),
    (["node", "build-image", "--build-arg", "NOEQUALS"], "expected NAME=VALUE"),
    (["node", "build-image", "--from-host", "--dockerfile", "docker/Dockerfile.runtime"],
     "--from-host cannot be combined with --dockerfile, --suite or --mirror"),
    (["node", "build-image", "--from-host", "--suite", "trixie"], "--from-host cannot be combined"),
    (["node", "build-image", "--from-host", "--mirror", "http://m"], "--from-host cannot be combined"),
    (["node", "build-image", "--exclude", "usr/lib/foo"], "--exclude needs --from-host"),
    (["node", "build-image", "--from-host", "--exclude", "/"], "Invalid value for '--exclude'"),
    (["node", "build-image", "--from-host", "--exclude", "../etc"], "Invalid value for '--exclude'"),
    (["cost", "report", "--group-by", "week"], "'week' is not one of"),
    (["cost", "report", "--format", "pdf"], "'pdf' is not one of"),
    (["cost", "budget", "set", "b"], "Missing option '--usd'"),
    (["cost", "budget", "set", "b", "--usd", "1", "--period", "year"], "'year' is not one of"),
    (["server", "--sandbox", "vm"], "'vm' is not one of 'process', 'docker'"),
    (["server", "--port", "http"], "'http' is not a valid integer"),
    (["server", "--log-level", "loud"], "'loud' is not one of"),
    (["demo", "--port", "x"], "'x' is not a valid integer"),
    (["frobnicate"], "No such command 'frobnicate'"),
])
def test_usage_errors_are_one_line_exit_2(argv: list[str], message: str) -> None:
    result = run(*argv)
    assert result.exit_code == 2, result.output
    line = error_line(result)
    assert message in line
    assert len(result.stderr.strip().splitlines()) == 1
    assert "--help" in line  # where to look next
    assert result.stdout == ""


@pytest.mark.parametrize("argv", [[], ["cost"], ["cost", "budget"]])
def test_a_group_without_its_command_shows_its_help(argv: list[str]) -> None:
    result = run(*argv)
    assert result.exit_code == 2
    assert result.stderr.startswith(f"Usage: {' '.join(['slfaas'] + argv)} [OPTIONS] COMMAND")
    assert "Commands:" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("argv, message", [
    (["invoke", "fn"], "nothing to send"),
    (["invoke", "fn", "--payload", "{}", "--prompt", "x"], "either --payload or --prompt"),
    (["invoke", "fn", "--payload", "[1,"], "--payload is not valid JSON"),
    (["deploy", "fn", "--adapter", "/nonexistent/adapter"], "adapter directory not found"),
    (["cost", "report", "--data-dir", "/tmp", "--endpoint", DEAD],
     "give one of --endpoint, --data-dir or --database-url"),
    (["cost", "report", "--data-dir", "/tmp", "--database-url", "sqlite://"], "give one of --endpoint"),
    (["cost", "report", "--prices", "p.toml"], "--prices applies with --data-dir"),
    (["cost", "report", "--data-dir", "/nonexistent/data"], "no registry in /nonexistent/data"),
])
def test_argument_errors_are_one_line_exit_1(argv: list[str], message: str) -> None:
    result = run(*argv, "--endpoint", DEAD) if argv[:2] != ["cost", "report"] else run(*argv)
    assert result.exit_code == 1, result.output
    assert message in error_line(result)
    assert result.stdout == ""


CLIENT_COMMANDS = [
    ["list"], ["list", "-o", "json"], ["delete", "fn"], ["invoke", "fn", "--prompt", "hi"],
    ["invoke", "fn", "--prompt", "hi", "--stream"], ["logs", "fn"], ["logs", "fn", "--since", "10m"],
    ["logs", "fn", "--follow"], ["models"], ["models", "list"], ["models", "add", "m", "/tmp"], ["models", "remove", "m"],
    ["node"], ["node", "status", "-o", "json"], ["node", "status", "--watch"], ["node", "verify"],
    ["cost", "report"], ["cost", "budget", "list"], ["cost", "budget", "set", "b", "--usd", "1"],
    ["cost", "budget", "delete", "b"],
]


@pytest.mark.parametrize("argv", CLIENT_COMMANDS, ids=" ".join)
def test_unreachable_server_is_one_line_error(argv: list[str]) -> None:
    result = run(*argv, "--endpoint", DEAD)
    assert result.exit_code == 1, result.output
    line = error_line(result)
    assert f"cannot reach slfaas at {DEAD}" in line and "slfaas server" in line


def test_endpoint_precedence() -> None:
    env = {"SLFAAS_ENDPOINT": "http://127.0.0.1:7"}
    assert "at http://127.0.0.1:7 " in error_line(run("list", env=env))
    assert "at http://127.0.0.1:5 " in error_line(run("list", "--endpoint", "http://127.0.0.1:5", env=env))
    # on a group, before or after the action, and on the root
    assert "at http://127.0.0.1:5 " in error_line(run("models", "--endpoint", "http://127.0.0.1:5", "list", env=env))
    assert "at http://127.0.0.1:5 " in error_line(run("node", "--endpoint", "http://127.0.0.1:5", env=env))
    assert "at http://127.0.0.1:5 " in error_line(run("--endpoint", "http://127.0.0.1:5", "list", env=env))
    # the nearest wins
    assert "at http://127.0.0.1:3 " in error_line(
        run("--endpoint", "http://127.0.0.1:5", "models", "list", "--endpoint", "http://127.0.0.1:3", env=env))


def test_default_endpoint_without_env(monkeypatch: pytest.MonkeyPatch) -> None:
    from slfaas.client import DEFAULT_ENDPOINT, endpoint_default

    monkeypatch.delenv("SLFAAS_ENDPOINT", raising=False)
    assert endpoint_default() == DEFAULT_ENDPOINT == "http://127.0.0.1:9000"
    assert endpoint_url(parse_only(["list"])) == DEFAULT_ENDPOINT
    assert endpoint_url(parse_only(["models", "list"])) == DEFAULT_ENDPOINT


def test_debug_shows_the_traceback_then_the_line() -> None:
    result = run("--debug", "list", "--endpoint", DEAD)
    assert result.exit_code == 1
    assert "Traceback (most recent call last)" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(f"slfaas: error: cannot reach slfaas at {DEAD}")
    assert "Traceback" in run("list", "--endpoint", DEAD, env={"SLFAAS_DEBUG": "1"}).stderr


def test_an_unexpected_error_is_one_line_too(monkeypatch: pytest.MonkeyPatch) -> None:
    import slfaas.cli.functions as functions

    def broken(url: str, fn: object) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(functions, "boto_call", broken)
    result = run("list", "--endpoint", DEAD)
    assert result.exit_code == 1
    assert error_line(result) == "slfaas: error: RuntimeError: disk on fire (--debug shows the traceback)"


def test_ctrl_c_exits_130_without_a_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    import slfaas.cli.functions as functions

    def interrupted(url: str, fn: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(functions, "boto_call", interrupted)
    result = run("list")
    assert result.exit_code == 130 and "Traceback" not in result.stderr


def test_payload_from_stdin_is_checked_and_sent() -> None:
    assert "--payload is not valid JSON" in error_line(run("invoke", "fn", "--payload", "-", "--endpoint", DEAD,
                                                           stdin="{nope"))
    # valid JSON from stdin gets as far as the (dead) server
    assert "cannot reach slfaas" in error_line(run("invoke", "fn", "--payload", "-", "--endpoint", DEAD,
                                                   stdin='{"prompt": "hi"}'))


def test_deploy_reaches_the_server_only_with_a_valid_adapter(tiny_assets, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "adapter_config.json").write_text("{}")
    assert "has no adapter_model.safetensors" in error_line(run("deploy", "fn", "--adapter", str(tmp_path),
                                                                "--endpoint", DEAD))
    result = run("-q", "deploy", "fn", "--adapter", str(tiny_assets.adapter_a), "--endpoint", DEAD, "-o", "json")
    assert "cannot reach slfaas" in error_line(result) and result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1  # -q: nothing but the error


def test_version() -> None:
    import slfaas

    result = run("--version")
    assert result.exit_code == 0 and result.stdout.strip() == f"slfaas {slfaas.__version__}"


def test_shell_completion_through_click() -> None:
    script = run(env={"_SLFAAS_COMPLETE": "bash_source"})
    assert script.exit_code == 0
    assert "_slfaas_completion()" in script.stdout and "complete -o nosort -F _slfaas_completion slfaas" in script.stdout

    def complete(words: str) -> list[str]:
        n = len(words.split()) - (0 if words.endswith(" ") else 1)
        r = run(env={"_SLFAAS_COMPLETE": "bash_complete", "COMP_WORDS": words, "COMP_CWORD": str(n)})
        assert r.exit_code == 0
        return [ln.split(",", 1)[1] for ln in r.stdout.splitlines() if ln]

    assert set(complete("slfaas de")) == {"deploy", "delete", "demo"}
    assert set(complete("slfaas node ")) == {"status", "verify", "build-image"}
    assert "--follow" in complete("slfaas logs fn --f")
    assert complete("slfaas list -o ") == ["table", "json"]
    # function names come from the server; none reachable: no candidates, no error
    assert complete(f"slfaas invoke --endpoint {DEAD} ") == []


def test_json_output_is_parseable_even_when_empty(monkeypatch: pytest.MonkeyPatch) -> None:
    import slfaas.cli.functions as functions

    monkeypatch.setattr(functions, "boto_call", lambda url, fn: [])
    result = run("list", "-o", "json")
    assert result.exit_code == 0 and json.loads(result.stdout) == {"Functions": []}
    assert run("list").stdout.strip() == "no functions deployed"
