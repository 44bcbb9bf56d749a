"""The offload choice: the lowest-value resident artifacts that free enough GPU memory, never
one in use, never a backbone; and placement's use of it when a new instance would not fit."""
from __future__ import annotations

import pytest

from slfaas.gpu_node.policy.offload import Resident, choose_offload
from slfaas.gpu_node.policy.placement import Refuse, Start, place
from slfaas.gpu_node.policy.view import GpuView, InstanceView, NodeSnapshot

A, B, C, D = ("a", "r"), ("b", "r"), ("c", "r"), ("d", "r")


def test_the_lowest_value_density_goes_first() -> None:
    hot = Resident("hot", "instance", 1000, rate_per_s=2.0, reload_s=3.0)        # 6 s/s over 1000 MB
    cold = Resident("cold", "instance", 1000, rate_per_s=0.01, reload_s=3.0)
    big_rare = Resident("big", "instance", 4000, rate_per_s=0.5, reload_s=3.0)   # 1.5 s/s over 4000 MB
    assert choose_offload([hot, cold, big_rare], 500) == ("cold",)
    # cold then big by density; big alone covers 1500 MB, so cold stays
    assert choose_offload([hot, cold, big_rare], 1500) == ("big",)
    assert choose_offload([hot, cold, big_rare], 4500) == ("cold", "big")


def test_needless_picks_are_put_back_most_valuable_first() -> None:
    small = Resident("small", "instance", 200, rate_per_s=0.0, reload_s=1.0)
    mid = Resident("mid", "instance", 300, rate_per_s=0.001, reload_s=1.0)
    large = Resident("large", "instance", 3000, rate_per_s=0.01, reload_s=1.0)
    # greedy takes small, mid, then large; large alone covers the need: the other two stay
    assert choose_offload([small, mid, large], 2500) == ("large",)


def test_in_use_artifacts_and_backbones_are_never_chosen() -> None:
    busy = Resident("busy", "instance", 5000, in_use=True)
    backbone = Resident("backbone", "backbone", 14000)
    adapter = Resident("adapter", "adapter", 80, rate_per_s=0.1, reload_s=0.2)
    assert choose_offload([busy, backbone, adapter], 50) == ("adapter",)
    assert choose_offload([busy, backbone, adapter], 100) is None     # not enough without them
    assert choose_offload([busy], 0) == ()


def test_stale_first_then_least_recently_used_among_equals() -> None:
    old = Resident("old", "instance", 1000, last_used_s=1.0)
    new = Resident("new", "instance", 1000, last_used_s=9.0)
    stale = Resident("stale", "instance", 1000, rate_per_s=5.0, reload_s=5.0, last_used_s=10.0, stale=True)
    assert choose_offload([new, old, stale], 10) == ("stale",)
    assert choose_offload([new, old], 10) == ("old",)


def test_bad_values_are_refused() -> None:
    for kwargs in ({"gpu_mb": -1.0}, {"rate_per_s": float("nan")}, {"reload_s": float("inf")}):
        with pytest.raises(ValueError):
            Resident("x", "instance", **{"gpu_mb": 1.0, **kwargs})  # type: ignore[arg-type]


def _idle(iid: str, key, mb: float | None, rate: float, reload_s: float = 2.0) -> InstanceView:  # type: ignore[no-untyped-def]
    return InstanceView(iid, key, "IDLE", 1.0, gpu_mb=mb, rate_per_s=rate, reload_s=reload_s)


def test_placement_frees_the_lowest_value_idle_instances_for_a_new_one() -> None:
    gpu = GpuView(free_mb=500, instance_mb=1500)         # 1000 MB short
    s = NodeSnapshot(10.0, (_idle("a1", A, 1200, 1.0), _idle("b1", B, 600, 0.01), _idle("c1", C, 700, 0.02),
                            InstanceView("d1", D, "BUSY", 1.0, inflight=1, gpu_mb=9000)), 8, gpu)
    decision = place(s, ("e", "r"))
    assert isinstance(decision, Start) and set(decision.evict) == {"b1", "c1"}   # not the busy one, not hot a1
    # an idle instance a queued request will use is in use
    s2 = NodeSnapshot(10.0, s.instances, 8, gpu, waiting_keys=frozenset({B, C}))
    assert place(s2, ("e", "r")) == Start(("a1", ))
    s3 = NodeSnapshot(10.0, s.instances, 8, gpu, waiting_keys=frozenset({A, B, C}))
    assert isinstance(place(s3, ("e", "r")), Refuse)
