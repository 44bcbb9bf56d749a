"""The preloader's mechanism around the pure planner: arrivals in, pools and tiers sized."""
from __future__ import annotations

from pathlib import Path

from slfaas.gpu_node.events import InvocationSubmitted
from slfaas.gpu_node.preloader import PreloadConfig, Preloader
from slfaas.gpu_node.resources.adapters import ADAPTER_WEIGHTS, AdapterTiers
from slfaas.gpu_node.sandboxes.pool_support import Flavour
from slfaas.gpu_node.types import BackboneInfo


class _Pools:
    def __init__(self) -> None:
        self.targets: dict[Flavour, int] = {}

    def set_prewarmed(self, flavour: Flavour, count: int) -> None:
        self.targets[flavour] = count


def _backbone(path: Path) -> BackboneInfo:
    return BackboneInfo(str(path), "cpu", 1 << 20, 10, 0.1, 1.0, 0.0)


def test_each_resident_backbone_gets_its_minimum_and_busy_adapters_the_host_tier(tmp_path: Path) -> None:
    base = tmp_path / "base"
    codes = {}
    for name in ("hot", "cold"):
        d = tmp_path / name
        d.mkdir()
        (d / ADAPTER_WEIGHTS).write_bytes(b"\0" * 4096)
        codes[name] = d
    now = [1000.0]
    pools, tiers = _Pools(), AdapterTiers(host_budget_bytes=4096)   # room for one adapter
    pre = Preloader(PreloadConfig(min_prewarmed_per_backbone=2, prewarm_budget_mb=10_000), "cpu", pools,  # type: ignore[arg-type]
                    tiers, lambda: [_backbone(base)], lambda: 500.0, clock=lambda: now[0])
    for k in range(20):   # "hot" is invoked far more often than "cold"
        pre.on_event(InvocationSubmitted(990.0 + k * 0.5, f"r{k}", "hot", "$LATEST", str(base), str(codes["hot"])))
    pre.on_event(InvocationSubmitted(900.0, "r-cold", "cold", "$LATEST", str(base), str(codes["cold"])))
    plan = pre.tick()
    assert pools.targets[Flavour(base, "cpu")] >= 2              # the configured minimum, at least
    assert [a.function for a in plan.adapters] == ["hot:$LATEST"]   # higher value density wins the budget
    assert tiers.info().adapters == ("hot",)
    assert pre.last is not None and pre.last.runtimes[0][2] == pools.targets[Flavour(base, "cpu")]
    tiers.close()


def test_nothing_is_prewarmed_for_a_backbone_that_is_not_resident(tmp_path: Path) -> None:
    pools, tiers = _Pools(), AdapterTiers(0)
    pre = Preloader(PreloadConfig(), "cpu", pools, tiers, lambda: [], lambda: 500.0, clock=lambda: 10.0)  # type: ignore[arg-type]
    pre.on_event(InvocationSubmitted(9.0, "r", "f", "1", str(tmp_path / "base"), str(tmp_path)))
    pre.tick()
    assert pools.targets == {}
