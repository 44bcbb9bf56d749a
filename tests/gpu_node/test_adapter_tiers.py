"""The host adapter tier: sealed per-adapter copies, handed out read-only, placed by the plan."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from slfaas.gpu_node.resources.adapters import ADAPTER_WEIGHTS, AdapterTiers


def _code(root: Path, name: str, size: int) -> Path:
    d = root / name
    d.mkdir()
    (d / ADAPTER_WEIGHTS).write_bytes(bytes([len(name)]) * size)
    return d


def test_a_placed_adapter_is_handed_out_read_only_with_its_own_bytes(tmp_path: Path) -> None:
    a, b = _code(tmp_path, "a", 1000), _code(tmp_path, "bb", 2000)
    tiers = AdapterTiers(host_budget_bytes=10_000)
    assert tiers.handout(a) is None                           # nothing placed: the disk tier
    tiers.place([a, b])
    fd = tiers.handout(a)
    assert fd is not None
    try:
        assert os.pread(fd, 5000, 0) == (a / ADAPTER_WEIGHTS).read_bytes()   # just its own adapter
        with pytest.raises(OSError):
            os.write(fd, b"x")                                # read-only, and the copy is sealed
    finally:
        os.close(fd)
    info = tiers.info()
    assert info.used_bytes == 3000 and set(info.adapters) == {"a", "bb"}
    assert (info.hits, info.misses) == (1, 1)
    tiers.close()


def test_placement_follows_the_plan_within_the_budget(tmp_path: Path) -> None:
    a, b, c = _code(tmp_path, "a", 4000), _code(tmp_path, "b", 4000), _code(tmp_path, "c", 4000)
    tiers = AdapterTiers(host_budget_bytes=9000)
    tiers.place([a, b, c])                                    # priority order; c does not fit
    assert tiers.info().adapters == ("a", "b")
    handed = tiers.handout(b)
    tiers.place([c, a])                                       # b leaves, c comes in
    assert set(tiers.info().adapters) == {"a", "c"}
    assert handed is not None and os.pread(handed, 10, 0) == b"\x01" * 10   # what was handed stays valid
    os.close(handed)
    assert tiers.handout(b) is None
    tiers.close()


def test_a_deleted_function_is_simply_not_held(tmp_path: Path) -> None:
    tiers = AdapterTiers(host_budget_bytes=10_000)
    tiers.place([tmp_path / "gone"])
    assert tiers.info().adapters == ()
