"""Acceptance: 8 containers of 8 adapters share one backbone; their PSS sum is within 1.5× of
the process backend's figure, measured here the same way (bench/memory_pss.py)."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _bench():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("memory_pss_docker", ROOT / "bench" / "memory_pss.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_eight_containers_share_one_backbone(docker_client, tmp_path: Path) -> None:
    bench = _bench()
    docker = bench.measure(tmp_path, 8, log=lambda *_: None, sandbox="docker")
    process = bench.measure(tmp_path, 8, log=lambda *_: None, sandbox="process")  # same assets, same node
    assert docker.backbone_mb >= 200
    # one copy of the backbone between the 8 containers, not eight
    assert docker.backbone_pss_sum_mb <= 1.05 * docker.backbone_mb, docker
    assert docker.backbone_rss_sum_mb >= 6 * docker.backbone_pss_sum_mb, docker
    # (the bench's bound, 1.5 × backbone + 8 × one instance's overhead, is not asserted here: it
    # adds an overhead measured while the first instance ran alone to a sum measured later, and
    # the shared libraries' share of PSS moves with every process on the machine mapping them;
    # the single backbone copy is asserted just above, the containers' overhead just below)
    # the bound against the process backend
    assert docker.pss_sum_mb <= 1.5 * process.pss_sum_mb, (docker, process)
