"""Acceptance: 8 warm instances of 8 adapters share one >=200 MB backbone (PSS)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _bench():
    spec = importlib.util.spec_from_file_location("memory_pss", ROOT / "bench" / "memory_pss.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_eight_instances_share_one_backbone(tmp_path: Path) -> None:
    r = _bench().measure(tmp_path, 8, log=lambda *_: None)
    assert r.backbone_mb >= 200
    # The bench's bound (1.5 × backbone + 8 × the first instance's overhead, measured while it
    # ran alone) is not asserted: beside another test run the other instances measured ~26 MB
    # more each than the first (where a runtime came from, a pre-warmed one or a fresh start,
    # depends on the machine's load), and 8 × that overhead left no margin. What the bound
    # guards is asserted directly: no instance holds a private copy of the backbone, or half of
    # one, beside its share of the single copy.
    share_mb = r.backbone_pss_sum_mb / r.instances
    assert max(r.per_instance_pss_mb) - share_mb < r.overhead_one_mb + 0.5 * r.backbone_mb, r
    # sharper: the backbone mapping, summed over 8 processes, is one copy, not eight
    assert r.backbone_pss_sum_mb <= 1.05 * r.backbone_mb, r
    assert r.backbone_rss_sum_mb >= 6 * r.backbone_pss_sum_mb, r
