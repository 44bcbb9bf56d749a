"""``slfaas bench replay``'s parsing and errors: every option that cannot be replayed is one
line and a non-zero exit, no traceback, before the server is asked anything."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from slfaas.cli.bench import bench

ROOT = Path(__file__).resolve().parents[2]
TRACE = str(ROOT / "bench" / "data" / "AzureLLMInferenceTrace_conv.csv")
DEAD = "http://127.0.0.1:9"  # the discard port: nothing listens there


def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(bench, ["replay", *args])
    return result.exit_code, result.output


def _one_error_line(output: str) -> str:
    lines = [ln for ln in output.splitlines() if ln.strip()]
    assert len(lines) == 1, output
    assert lines[0].startswith("slfaas: error: "), output
    assert "Traceback" not in output
    return lines[0]


def test_help_names_every_option() -> None:
    code, out = _run("--help")
    assert code == 0
    for option in ("--trace", "--functions", "--popularity", "--speedup", "--duration", "--endpoint", "--slo-ms",
                   "--max-prompt-tokens", "--max-output-tokens", "--out", "--synthetic", "--deploy-adapters",
                   "--model", "--max-in-flight"):
        assert option in out
    group = CliRunner().invoke(bench, ["--help"])
    assert group.exit_code == 0 and "replay" in group.output


@pytest.mark.parametrize("args, message", [
    (["--trace", "/nonexistent/t.csv", "--functions", "2"], "cannot read trace /nonexistent/t.csv"),
    (["--trace", TRACE, "--functions", "0"], "--functions must be at least 1, got 0"),
    (["--trace", TRACE, "--functions", "2", "--popularity", "zipf"], "bad popularity 'zipf'"),
    (["--trace", TRACE, "--functions", "2", "--popularity", "pareto:1"], "bad popularity"),
    (["--trace", TRACE, "--functions", "2", "--speedup", "0"], "--speedup must be a number > 0, got 0.0"),
    (["--trace", TRACE, "--functions", "2", "--speedup", "-3"], "--speedup must be"),
    (["--trace", TRACE, "--functions", "2", "--slo-ms", "0"], "--slo-ms must be a number > 0"),
    (["--trace", TRACE, "--functions", "2", "--max-in-flight", "0"], "--max-in-flight must be at least 1"),
    (["--trace", TRACE, "--functions", "2", "--max-prompt-tokens", "0"], "--max-prompt-tokens must be at least 1"),
    (["--trace", TRACE, "--functions", "2", "--max-output-tokens", "-1"], "--max-output-tokens must be at least 1"),
    (["--trace", TRACE, "--functions", "2", "--duration", "0"], "--duration must be a number of seconds > 0"),
    (["--trace", TRACE, "--functions", "2", "--start", "5000"], "the slice from 5000 s on of "
                                                                "AzureLLMInferenceTrace_conv.csv holds no requests"),
    (["--trace", TRACE, "--functions", "2", "--start", "0.01", "--duration", "0.001"], "holds no requests"),
    (["--trace", TRACE, "--functions", "2", "--synthetic", "poisson:x"], "bad synthetic arrivals 'poisson:x'"),
    (["--trace", TRACE, "--functions", "2", "--synthetic", "gamma:5:2"], "--synthetic needs --duration"),
    (["--trace", TRACE, "--functions", "2", "--synthetic", "gamma:5:2", "--duration", "9", "--start", "3"],
     "--start picks a slice of the trace's own arrivals"),
    (["--trace", TRACE, "--functions", "2", "--function-prefix", "a b"], "--function-prefix must be 1-50 letters"),
    (["--trace", TRACE, "--functions", "2", "--function-prefix", "x" * 51], "--function-prefix must be"),
    (["--trace", TRACE, "--functions", "2", "--model", "/nonexistent"], "/nonexistent is not a model directory"),
    (["--trace", TRACE, "--functions", "2", "--deploy-adapters", "/nonexistent"],
     "cannot reach slfaas at http://127.0.0.1:9"),   # no --model: the server is asked which base model
])
def test_one_line_errors(args: list[str], message: str) -> None:
    code, out = _run(*args, "--endpoint", DEAD)
    assert code == 1
    assert message in _one_error_line(out)


def test_bad_trace_contents(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.1,12,x\n")
    code, out = _run("--trace", str(bad), "--functions", "1", "--endpoint", DEAD)
    assert code == 1
    assert _one_error_line(out) == "slfaas: error: bad.csv line 2: GeneratedTokens must be an integer, got 'x'"
    empty = tmp_path / "empty.csv"
    empty.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n")
    code, out = _run("--trace", str(empty), "--functions", "1", "--endpoint", DEAD)
    assert code == 1 and "has a header but no requests" in _one_error_line(out)


def test_usage_errors_exit_2() -> None:
    for args in (["--functions", "2"], ["--trace", TRACE, "--functions", "two"], ["--trace", TRACE]):
        code, out = _run(*args)
        assert code == 2 and "Traceback" not in out


def test_unreachable_server_with_a_model(tmp_path: Path) -> None:
    from slfaas.testing.tinymodels import make_tokenizer

    (tmp_path / "config.json").write_text(json.dumps({"max_position_embeddings": 128}))
    make_tokenizer(tmp_path)
    code, out = _run("--trace", TRACE, "--functions", "2", "--max-requests", "3", "--model", str(tmp_path),
                     "--endpoint", DEAD)
    assert code == 1
    assert "cannot reach slfaas at http://127.0.0.1:9" in _one_error_line(out)


def test_runs_as_a_module() -> None:
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "slfaas.cli.bench", "replay", "--trace", TRACE, "--functions", "0"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip() == "slfaas: error: --functions must be at least 1, got 0"
