"""bench/batching_gpu.py runs one mode per command into the same --out (a 256-request burst does
not fit one 10-minute command): a later run keeps the modes an earlier one wrote for the same
burst, and only those."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def bench(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import batching_gpu

    return batching_gpu


def _args(bench, **change: object) -> argparse.Namespace:  # type: ignore[no-untyped-def]
    values = {"device": "cuda", "tiny": False, "functions": 16, "requests": 256, "slo_ms": 1000.0, "max_prompt": 1024,
              "max_output": 128, "memory_mb": 8192, "seed": 0, "max_batch": 8, "shared_batch": 64}
    assert set(values) == set(bench.WORKLOAD_KEYS)
    return argparse.Namespace(**{**values, **change})


def test_modes_of_the_same_burst_are_combined(bench, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"args": {**vars(_args(bench)), "modes": "unbatched", "out": "x"},
                                "workload": {"requests": 256}, "unbatched": {"goodput_rps": 0.05}}))
    assert bench._earlier_modes(path, _args(bench)) == {"unbatched": {"goodput_rps": 0.05}}


@pytest.mark.parametrize("change", [{"requests": 64}, {"seed": 1}, {"max_batch": 4}, {"slo_ms": 500.0}])
def test_a_different_burst_is_not_combined(bench, tmp_path: Path, change: dict) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"args": vars(_args(bench)), "unbatched": {"goodput_rps": 0.05}}))
    assert bench._earlier_modes(path, _args(bench, **change)) == {}


def test_no_or_unreadable_results_mean_a_fresh_table(bench, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    assert bench._earlier_modes(tmp_path / "results.json", _args(bench)) == {}
    (tmp_path / "results.json").write_text("{not json")
    assert bench._earlier_modes(tmp_path / "results.json", _args(bench)) == {}


def test_memory_peaks_are_the_largest_samples(bench) -> None:  # type: ignore[no-untyped-def]
    from slfaas.bench.sampler import NodeSample

    samples = [NodeSample(1.0, 4, 2, 0, 90_000.0, 143_000.0, 20_000.0),
               NodeSample(2.0, 4, 4, 0, 130_500.0, 143_000.0, 61_000.0),
               NodeSample(3.0, 4, 1, 0, 100_000.0, 143_000.0, None)]
    assert bench._memory_peaks(samples) == {"samples": 3, "device_total_mb": 143_000.0,
                                            "device_used_mb_max": 130_500.0, "instances_held_mb_max": 61_000.0}
    cpu = [NodeSample(1.0, 1, 0, 0, None, None, None)]
    assert bench._memory_peaks(cpu) == {"samples": 1, "device_total_mb": None, "device_used_mb_max": None,
                                        "instances_held_mb_max": None}
