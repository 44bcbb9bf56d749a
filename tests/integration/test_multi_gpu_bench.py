"""bench/multi_gpu.py runs end to end on CPU with the tiny model (the GPU figures come from the
same command on a GPU machine): two servers, functions spread over the multi-device one, one
backbone per node, TTFT and burst figures written."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT


@pytest.mark.slow
def test_multi_gpu_bench_smoke_on_cpu(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "bench/multi_gpu.py", "--device", "cpu", "--tiny", "--functions", "2",
                          "--samples", "1", "--burst-requests", "1", "--out", str(tmp_path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    result = json.loads((tmp_path / "multi_gpu.json").read_text())
    assert result["placement"] == {"cpu#0": 1, "cpu#1": 1}          # the burst of cold starts spread
    assert list(result["backbones_per_node"].values()) == [1, 1]    # one backbone copy per node
    assert result["warm_ttft_ms"]["one_device"] > 0 and set(result["warm_ttft_ratio_vs_one"]) == {"cpu#0", "cpu#1"}
    assert result["burst_tokens_per_s"]["one"] > 0 and result["burst_ratio_multi_vs_one"] > 0
