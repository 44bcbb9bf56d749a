"""Cluster placement as a pure function of node views: no threads, sleeps or nodes."""
from __future__ import annotations

from dataclasses import replace

from hypothesis import given
from hypothesis import strategies as st

from slfaas.gpu_node.policy.cluster_placement import (ADAPTER_RESIDENT, BACKBONE_RESIDENT, COLD, MIB, WARM, NodeView,
                                                      Want, estimate_cold_start_s, rank, why_no_room)

A = ("a", "r1")
BASE = "/models/base"
GB = 1 << 30


def node(node_id: str, order: int, **kw) -> NodeView:  # type: ignore[no-untyped-def]
    values: dict = dict(warm_free={}, backbones=frozenset(), live_instances=0, idle_instances=0, max_instances=4,
                        load_bytes_per_s=1.0 * GB)
    values.update(kw)
    return NodeView(node_id, order, **values)


WANT = Want(A, BASE, backbone_bytes=4 * GB, adapter="sha-a", adapter_bytes=16 * MIB)


def ids(nodes: list[NodeView], want: Want = WANT) -> list[str]:
    return [r.node_id for r in rank(nodes, want)]


def test_warm_beats_adapter_resident_beats_backbone_resident_beats_cold() -> None:
    cold = node("cold", 0)
    backbone = node("backbone", 1, backbones=frozenset({BASE}))
    adapter = node("adapter", 2, adapter_tiers={"sha-a": "host"}, tier_bytes_per_s={"host": 10.0 * GB})
    warm = node("warm", 3, warm_free={A: 1}, inflight=5, queue_s=9.0)   # busy elsewhere, still first
    ranked = rank([cold, backbone, adapter, warm], WANT)
    assert [r.node_id for r in ranked] == ["warm", "adapter", "backbone", "cold"]
    assert [r.preference for r in ranked] == [WARM, ADAPTER_RESIDENT, BACKBONE_RESIDENT, COLD]
    assert ranked[0].cold_start_s == 0.0


def test_a_warm_instance_of_another_revision_or_without_room_does_not_count() -> None:
    other_revision = node("other", 0, warm_free={("a", "r0"): 2})
    full = node("full", 1, warm_free={A: 0}, backbones=frozenset({BASE}))
    assert [r.preference for r in rank([other_revision, full], WANT)] == [BACKBONE_RESIDENT, COLD]


def test_among_cold_nodes_the_least_estimated_cold_start_wins() -> None:
    slow_disk = node("slow", 0, load_bytes_per_s=0.5 * GB)
    fast_disk = node("fast", 1, load_bytes_per_s=4.0 * GB)
    queued_fast = node("queued", 2, load_bytes_per_s=4.0 * GB, queue_s=5.0)
    assert ids([slow_disk, fast_disk, queued_fast]) == ["fast", "queued", "slow"]
    assert estimate_cold_start_s(fast_disk, WANT) == 4 * GB / (4.0 * GB) + 16 * MIB / (4.0 * GB)
    assert estimate_cold_start_s(queued_fast, WANT) == estimate_cold_start_s(fast_disk, WANT) + 5.0


def test_queue_spreads_load_among_nodes_holding_the_backbone() -> None:
    busy = node("busy", 0, backbones=frozenset({BASE}), queue_s=0.4, inflight=2)
    quiet = node("quiet", 1, backbones=frozenset({BASE}))
    assert ids([busy, quiet]) == ["quiet", "busy"]


def test_an_adapter_in_a_fast_tier_loads_faster_than_from_disk() -> None:
    disk = node("disk", 0, load_bytes_per_s=0.1 * GB)
    tiered = replace(disk, node_id="tier", adapter_tiers={"sha-a": "gpu"}, tier_bytes_per_s={"gpu": 100.0 * GB})
    assert estimate_cold_start_s(tiered, WANT) < estimate_cold_start_s(disk, WANT)


def test_nodes_without_an_instance_slot_are_skipped_unless_they_can_evict() -> None:
    full = node("full", 0, live_instances=4, idle_instances=0, backbones=frozenset({BASE}))
    evicting = node("evicting", 1, live_instances=4, idle_instances=1, backbones=frozenset({BASE}))
    free = node("free", 2, live_instances=3, backbones=frozenset({BASE}))
    ranked = rank([full, evicting, free], WANT)
    assert [(r.node_id, r.evicts) for r in ranked] == [("free", False), ("evicting", True)]
    assert rank([full], WANT) == ()


def test_gpu_memory_must_hold_the_instance_and_a_backbone_not_yet_resident() -> None:
    need_bb = 4 * GB / MIB
    tight = node("tight", 0, free_mb=1000.0, instance_mb=1500.0, backbones=frozenset({BASE}))
    no_room_for_backbone = node("nobb", 1, free_mb=need_bb, instance_mb=1500.0)
    roomy = node("roomy", 2, free_mb=need_bb + 1500.0, instance_mb=1500.0)
    resident = node("resident", 3, free_mb=1500.0, instance_mb=1500.0, backbones=frozenset({BASE}))
    assert ids([tight, no_room_for_backbone, roomy, resident]) == ["resident", "roomy"]


def test_evicting_idle_instances_can_make_gpu_memory_room() -> None:
    evict = node("evict", 0, free_mb=500.0, instance_mb=1500.0, live_instances=2, idle_instances=1,
                 backbones=frozenset({BASE}))
    ranked = rank([evict], WANT)
    assert [(r.node_id, r.evicts) for r in ranked] == [("evict", True)]
    too_little = replace(evict, free_mb=0.0, instance_mb=1500.0, idle_instances=0)
    assert rank([too_little], WANT) == ()


def test_warm_nodes_are_ranked_by_inflight_then_join_order() -> None:
    a = node("a", 0, warm_free={A: 1}, inflight=3)
    b = node("b", 1, warm_free={A: 2}, inflight=1)
    c = node("c", 2, warm_free={A: 1}, inflight=1)
    assert ids([a, b, c]) == ["b", "c", "a"]


def test_among_equals_new_instances_go_where_fewer_run() -> None:
    crowded = node("crowded", 0, backbones=frozenset({BASE}), live_instances=3, idle_instances=3)
    sparse = node("sparse", 1, backbones=frozenset({BASE}), live_instances=1, idle_instances=1)
    assert ids([crowded, sparse]) == ["sparse", "crowded"]


def test_ties_go_to_the_node_that_joined_first_whatever_the_input_order() -> None:
    twins = [node(f"n{i}", order=i, backbones=frozenset({BASE})) for i in range(4)]
    assert ids(twins) == ["n0", "n1", "n2", "n3"]
    assert ids(list(reversed(twins))) == ["n0", "n1", "n2", "n3"]


@given(st.lists(st.tuples(st.booleans(), st.booleans(), st.integers(0, 4), st.integers(0, 4), st.integers(0, 3),
                          st.floats(0, 5)), min_size=1, max_size=6), st.randoms())
def test_ranking_is_a_function_of_the_views_alone(specs, rnd) -> None:  # type: ignore[no-untyped-def]
    nodes = [node(f"n{i}", i, warm_free={A: int(w)}, backbones=frozenset({BASE}) if bb else frozenset(),
                  live_instances=live, idle_instances=min(idle, live), inflight=inflight, queue_s=q)
             for i, (w, bb, live, idle, inflight, q) in enumerate(specs)]
    first = rank(nodes, WANT)
    shuffled = list(nodes)
    rnd.shuffle(shuffled)
    assert rank(shuffled, WANT) == first
    for r in first:   # every ranked node can take it: a warm instance, a slot, or an idle one to evict
        v = next(n for n in nodes if n.node_id == r.node_id)
        assert v.warm_free.get(A, 0) > 0 or v.live_instances < v.max_instances or v.idle_instances > 0
    assert {r.node_id for r in first} >= {n.node_id for n in nodes if n.warm_free.get(A, 0) > 0}


def test_no_room_says_memory_when_a_slot_is_free_but_the_device_is_full() -> None:
    small = node("small", 0, backbones=frozenset({BASE}), free_mb=1024.0, instance_mb=8192.0)
    smaller = node("smaller", 1, backbones=frozenset({BASE}), free_mb=512.0, instance_mb=8192.0)
    assert ids([small, smaller]) == []
    error_type, message = why_no_room([small, smaller], WANT)
    assert error_type == "InsufficientGpuMemory"
    assert "Not enough GPU memory" in message and "1.0 GiB free, 8.0 GiB needed" in message
    full = node("full", 2, live_instances=4, max_instances=4, free_mb=0.0, instance_mb=8192.0)
    assert "the 2 of 3 nodes with an instance slot free" in why_no_room([small, smaller, full], WANT)[1]
    # a node without the backbone also needs room for it; the one nearest to fitting is named
    _t, message = why_no_room([node("cold", 0, free_mb=1024.0, instance_mb=1024.0),
                               node("warm", 1, backbones=frozenset({BASE}), free_mb=512.0, instance_mb=1024.0)], WANT)
    assert "0.5 GiB free, 1.0 GiB needed" in message


def test_no_room_says_instances_when_every_slot_is_busy() -> None:
    full = node("full", 0, live_instances=4, idle_instances=0, max_instances=4, free_mb=1e6, instance_mb=1.0)
    assert why_no_room([full], WANT)[0] == "ConcurrentInvocationLimitExceeded"
    assert why_no_room([node("cpu", 0, live_instances=4, max_instances=4)], WANT)[0] == \
        "ConcurrentInvocationLimitExceeded"
