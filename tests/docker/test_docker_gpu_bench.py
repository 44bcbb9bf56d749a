"""The process-vs-Docker bench, on CPU with the tiny model: both sandboxes serve the same
functions from pre-warmed runtimes with PEFT's greedy outputs, containers keep their own
namespaces, a write into the backbone fails alone, and no container outlives its server."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def test_process_and_docker_side_by_side_on_cpu(docker_client, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(ROOT / "bench/docker_gpu.py"), "--tiny", "--device", "cpu",
                           "--functions", "2", "--cold-samples", "1", "--rounds", "1", "--out", str(out),
                           "--work", str(tmp_path / "work")],
                          capture_output=True, text=True, timeout=900, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    for s in ("process", "docker"):
        row = res["sandboxes"][s]
        assert row["greedy_equal_peft"] == row["greedy_total"] == 2, row   # fp32 CPU: token for token
        assert row["cold_tiers"] == ["prewarmed"], row
        assert row["instances"] == 2 and row["memory_per_instance_mb"] > 0
        assert res["attack"][s] == {"write_refused": True, "backbone_intact": True,
                                    "neighbour_output_unchanged": True}, res["attack"]
        assert res["uid"][s] != 0
    # a container shares none of the host's PID, IPC, network or mount namespaces
    assert not {"pid", "ipc", "net", "mnt"} & set(res["namespaces_shared_with_host"]["docker"])
    assert res["containers_before_stop"] >= 2 and res["containers_left"] == 0   # counted by the server's label
    assert "docker/process" in proc.stdout
