"""The ``slfaas`` command line: help for every command, one-line errors, no tracebacks."""
from __future__ import annotations

from pathlib import Path

import pytest

from slfaas.cli.main import cli, main

DEAD = "http://127.0.0.1:9"  # the discard port: nothing listens there
COMMANDS = ["server", "deploy", "invoke", "list", "delete", "logs", "models", "node", "cost", "bench", "demo"]


def _one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("slfaas: error: "), err
    assert "Traceback" not in err
    return lines[0]


def test_every_command_is_listed() -> None:
    assert sorted(cli.commands) == sorted(COMMANDS)


@pytest.mark.parametrize("argv", [[c, "--help"] for c in COMMANDS]
                         + [["models", a, "--help"] for a in ("add", "remove", "list")] + [["--help"]])
def test_help_exits_zero_and_prints_usage(argv, capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(argv) == 0
    out = capsys.readouterr().out
    prog = " ".join(["slfaas"] + [a for a in argv if a != "--help"])
    assert out.startswith(f"Usage: {prog}")
    if argv[0] in ("deploy", "invoke", "list", "delete", "logs", "models") and len(argv) == 2:
        assert "--endpoint" in out


def test_version(capsys) -> None:  # type: ignore[no-untyped-def]
    import slfaas

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"slfaas {slfaas.__version__}"


def test_unknown_command_is_a_usage_error(capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["frobnicate"]) == 2
    assert "No such command 'frobnicate'" in capsys.readouterr().err


def test_invoke_bad_payload_is_one_line_error(capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["invoke", "x", "--payload", "{bad", "--endpoint", DEAD]) == 1
    captured = capsys.readouterr()
    line = _one_error_line(captured.err)
    assert "--payload is not valid JSON" in line
    assert captured.out == ""


@pytest.mark.parametrize("argv, message", [
    (["invoke", "x", "--payload", "{}", "--prompt", "hi"], "either --payload or --prompt"),
    (["invoke", "x"], "nothing to send"),
])
def test_invoke_argument_errors(argv, message, capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(argv + ["--endpoint", DEAD]) == 1
    assert message in _one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize("argv", [
    ["list"],
    ["delete", "fn"],
    ["invoke", "fn", "--prompt", "hi"],
    ["logs", "fn"],
    ["models", "list"],
])
def test_unreachable_server_is_one_line_error(argv, capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(argv + ["--endpoint", DEAD]) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert f"cannot reach slfaas at {DEAD}" in line
    assert "slfaas server" in line


def test_endpoint_defaults_to_env(monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("SLFAAS_ENDPOINT", "http://127.0.0.1:7")
    assert main(["list"]) == 1
    assert "cannot reach slfaas at http://127.0.0.1:7" in capsys.readouterr().err


def test_deploy_without_adapter_files(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "README.md").write_text("not an adapter")
    assert main(["deploy", "fn", "--adapter", str(tmp_path), "--endpoint", DEAD]) == 1
    assert "has no adapter_config.json" in _one_error_line(capsys.readouterr().err)
    (tmp_path / "adapter_config.json").write_text("{}")
    assert main(["deploy", "fn", "--adapter", str(tmp_path), "--endpoint", DEAD]) == 1
    assert "has no adapter_model.safetensors" in _one_error_line(capsys.readouterr().err)


def test_deploy_missing_directory(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["deploy", "fn", "--adapter", str(tmp_path / "nope"), "--endpoint", DEAD]) == 1
    assert "adapter directory not found" in _one_error_line(capsys.readouterr().err)


def test_deploy_valid_adapter_to_dead_server(tiny_assets, capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["deploy", "fn", "--adapter", str(tiny_assets.adapter_a), "--endpoint", DEAD]) == 1
    err = capsys.readouterr().err
    assert f"cannot reach slfaas at {DEAD}" in err.splitlines()[-1]
    assert "Traceback" not in err
