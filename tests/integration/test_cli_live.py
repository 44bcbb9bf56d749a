"""The `slfaas` CLI as a user runs it (subprocesses) against a live server."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def slfaas(*args: str, url: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "slfaas.cli.main", *args, "--endpoint", url],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)


@pytest.mark.slow
def test_models_deploy_invoke_list_logs_delete(tiny_assets, module_server) -> None:
    url = module_server.url
    r = slfaas("models", "add", "tiny", str(tiny_assets.base), url=url)
    assert r.returncode == 0, r.stderr
    assert "tiny" in slfaas("models", "list", url=url).stdout

    # base model by registered name, overriding the adapter's own base_model_name_or_path
    r = slfaas("deploy", "cli-fn", "--adapter", str(tiny_assets.adapter_a), "--base-model", "tiny", url=url)
    assert r.returncode == 0, r.stderr
    assert "Active" in r.stdout
    assert "waiting" in r.stderr  # progress while the backbone loads

    r = slfaas("invoke", "cli-fn", "--payload", json.dumps({"prompt": "hello", "max_tokens": 6, "temperature": 0}),
               url=url)
    assert r.returncode == 0, r.stderr
    body = json.loads(r.stdout)
    assert body["usage"]["completion_tokens"] == 6
    assert body["metrics"]["cold_start"] is True

    r2 = slfaas("invoke", "cli-fn", "--prompt", "hello", "--max-tokens", "6", "--text", url=url)
    assert r2.returncode == 0 and r2.stdout.strip() == body["text"].strip()

    # redeploy with another adapter updates the function in place
    r = slfaas("deploy", "cli-fn", "--adapter", str(tiny_assets.adapter_b), "--base-model", "tiny", url=url)
    assert r.returncode == 0, r.stderr
    r3 = slfaas("invoke", "cli-fn", "--prompt", "hello", "--max-tokens", "6", "--text", url=url)
    assert r3.returncode == 0 and r3.stdout.strip() != body["text"].strip()

    listing = slfaas("list", url=url)
    assert listing.returncode == 0 and "cli-fn" in listing.stdout and "Active" in listing.stdout

    logs = slfaas("logs", "cli-fn", url=url)
    assert logs.returncode == 0
    assert "START RequestId:" in logs.stdout and "REPORT RequestId:" in logs.stdout
    assert "Init Duration:" in logs.stdout

    assert slfaas("delete", "cli-fn", url=url).returncode == 0
    gone = slfaas("invoke", "cli-fn", "--prompt", "x", url=url)
    assert gone.returncode == 1
    assert gone.stderr.startswith("slfaas: error: ResourceNotFoundException")
    assert len(gone.stderr.strip().splitlines()) == 1


def test_cli_errors_are_one_line(tmp_path: Path, module_server) -> None:
    url = module_server.url
    r = slfaas("deploy", "x", "--adapter", str(tmp_path), url=url)
    assert r.returncode == 1 and "adapter_config.json" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = slfaas("models", "add", "bad", str(tmp_path), url=url)
    assert r.returncode == 1 and "InvalidParameterValueException" in r.stderr
    r = slfaas("invoke", "x", "--payload", "{oops", url=url)
    assert r.returncode == 1 and "not valid JSON" in r.stderr
