"""The README's CLI quick-start, run line by line as written (bash, an `slfaas` on PATH, `~` the
home it describes) against a live server. The one line not run as written is `slfaas server`:
the suite's server stands in for it (it only parses that line), reached through
$SLFAAS_ENDPOINT because port 9000 may be taken on a test machine."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli._util import README, parse_only, quickstart_commands, slfaas_argv
from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def test_readme_quickstart_runs(tiny_assets, module_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    home = tmp_path / "home"
    assets = home / ".slfaas" / "demo" / "assets"   # where `make demo` leaves its model and adapters
    assets.mkdir(parents=True)
    (assets / "base").symlink_to(tiny_assets.base)
    (assets / "adapter-pirate").symlink_to(tiny_assets.adapter_a)
    (assets / "adapter-butler").symlink_to(tiny_assets.adapter_b)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "slfaas").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m slfaas.cli.main "$@"\n')
    (bin_dir / "slfaas").chmod(0o755)
    env = {**os.environ, "HOME": str(home), "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHONPATH": str(ROOT),
           "SLFAAS_ENDPOINT": module_server.url}

    outputs: dict[str, str] = {}
    for line in quickstart_commands(README.read_text()):
        if slfaas_argv(line)[0] == "server":
            parse_only(slfaas_argv(line))
            continue
        r = subprocess.run(["bash", "-c", line], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, f"{line}\n{r.stderr}"
        assert "Traceback" not in r.stderr, line
        outputs[line.split("#")[0].strip()] = r.stdout

    listed = json.loads(outputs["slfaas list -o json"])["Functions"]
    assert "pirate" in [f["FunctionName"] for f in listed]
    logs = next(out for cmd, out in outputs.items() if cmd.startswith("slfaas logs pirate"))
    assert logs.count("REPORT RequestId:") == 2  # the two invocations above it
    assert "pirate" in outputs["slfaas node status"]
    assert "deleted pirate" in outputs["slfaas delete pirate"]
