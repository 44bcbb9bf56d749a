"""The preloader's planner and arrival-rate estimator: pure, no threads, no clock."""
from __future__ import annotations

import itertools
import math

import pytest

from slfaas.gpu_node.policy.preload import (DeviceState, FunctionDemand, PreloadSnapshot, ResidentBackbone,
                                            estimate_rate_per_s, plan, poisson_tail)

MB = 1 << 20
LLAMA = ResidentBackbone("llama", runtime_bytes=100 * MB, runtime_saved_s=5.0)
QWEN = ResidentBackbone("qwen", runtime_bytes=80 * MB, runtime_saved_s=4.0)


def fn(name: str, rate: float, mb: int = 10, base: str = "llama", gpu_s: float = 1.5, host_s: float = 1.0,
       cold_rate: float | None = None) -> FunctionDemand:
    return FunctionDemand(name, base, rate, mb * MB, gpu_s, host_s, cold_rate)


def device(name: str, *backbones: ResidentBackbone, gpu_mb: int = 0, host_mb: int = 0,
           prewarm_mb: int = 0) -> DeviceState:
    return DeviceState(name, backbones, gpu_mb * MB, host_mb * MB, prewarm_mb * MB)


def snap(functions: list[FunctionDemand], devices: list[DeviceState], **kw: object) -> PreloadSnapshot:
    return PreloadSnapshot(tuple(functions), tuple(devices), **kw)  # type: ignore[arg-type]


def test_budgets_are_never_exceeded() -> None:
    functions = [fn(f"f{i}", rate=0.1 * (i + 1), mb=7 + i) for i in range(12)]
    devices = [device("cuda:0", LLAMA, gpu_mb=30, host_mb=25, prewarm_mb=350),
               device("cuda:1", LLAMA, gpu_mb=19, host_mb=0, prewarm_mb=99)]
    p = plan(snap(functions, devices))
    sizes = {f.function: f.adapter_bytes for f in functions}
    for d in devices:
        gpu = sum(sizes[a.function] for a in p.adapters if (a.device, a.tier) == (d.device, "gpu"))
        host = sum(sizes[a.function] for a in p.adapters if (a.device, a.tier) == (d.device, "host"))
        prewarm = sum(r.count * LLAMA.runtime_bytes for r in p.runtimes if r.device == d.device)
        assert gpu <= d.gpu_adapter_budget_bytes and host <= d.host_adapter_budget_bytes
        assert prewarm <= d.prewarm_budget_bytes
        usage = next(u for u in p.usage if u.device == d.device)
        assert (usage.gpu_adapter_bytes, usage.host_adapter_bytes, usage.prewarm_bytes) == (gpu, host, prewarm)
    assert len({a.function for a in p.adapters}) == len(p.adapters)   # one place per adapter
    assert p.adapters   # the budgets hold something: the checks above were not vacuous
    assert p.runtimes_for("llama", "cuda:1") == 0 and p.notes   # 99 MB cannot hold a 100 MB runtime


def test_higher_value_density_wins_the_gpu() -> None:
    # same bytes, higher rate; same rate, fewer bytes: both denser than "slow"
    functions = [fn("slow", rate=0.1), fn("busy", rate=2.0), fn("small", rate=0.1, mb=2)]
    p = plan(snap(functions, [device("cuda:0", LLAMA, gpu_mb=12, host_mb=10)]))
    assert p.placement("busy").tier == "gpu" and p.placement("small").tier == "gpu"
    assert p.placement("slow").tier == "host"
    # and the seconds saved matter, not only the rate
    functions = [fn("a", rate=1.0, gpu_s=0.2), fn("b", rate=1.0, gpu_s=3.0)]
    assert plan(snap(functions, [device("cuda:0", LLAMA, gpu_mb=10)])).placement("b").tier == "gpu"


def test_never_an_adapter_on_a_device_without_its_backbone() -> None:
    functions = [fn("l1", 1.0), fn("l2", 0.5), fn("q1", 3.0, base="qwen"), fn("orphan", 9.0, base="mistral")]
    devices = [device("cuda:0", LLAMA, gpu_mb=100, host_mb=100, prewarm_mb=1000),
               device("cuda:1", QWEN, gpu_mb=100, host_mb=100, prewarm_mb=1000)]
    p = plan(snap(functions, devices))
    holds = {d.device: {b.base_model for b in d.backbones} for d in devices}
    base = {f.function: f.base_model for f in functions}
    assert all(base[a.function] in holds[a.device] for a in p.adapters)
    assert p.placement("orphan") is None
    assert all(r.base_model in holds[r.device] for r in p.runtimes)
    assert {(r.base_model, r.device) for r in p.runtimes} == {("llama", "cuda:0"), ("qwen", "cuda:1")}


def test_minimum_runtimes_per_resident_backbone_even_without_traffic() -> None:
    devices = [device("cuda:0", LLAMA, QWEN, prewarm_mb=1000)]
    p = plan(snap([], devices, min_prewarmed_per_backbone=2))
    assert p.runtimes_for("llama", "cuda:0") == 2 and p.runtimes_for("qwen", "cuda:0") == 2
    assert plan(snap([], devices)).runtimes_for("llama", "cuda:0") == 1   # the default minimum
    assert plan(snap([], devices, min_prewarmed_per_backbone=0)).runtimes_for("qwen", "cuda:0") == 0


def test_more_runtimes_for_more_cold_starts_with_diminishing_returns() -> None:
    devices = [device("cuda:0", LLAMA, QWEN, prewarm_mb=1000)]
    quiet = plan(snap([fn("l", 0.01), fn("q", 0.01, base="qwen")], devices))
    busy = plan(snap([fn("l", 4.0), fn("q", 0.01, base="qwen")], devices))
    assert busy.runtimes_for("llama", "cuda:0") > quiet.runtimes_for("llama", "cuda:0")
    assert busy.runtimes_for("qwen", "cuda:0") >= 1
    # a warm-served function that never cold-starts asks for no more than the minimum
    warm = plan(snap([fn("l", 4.0, cold_rate=0.0)], devices))
    assert warm.runtimes_for("llama", "cuda:0") == 1


def test_stable_under_ties_and_input_order() -> None:
    functions = [fn(name, rate=1.0) for name in ("c", "a", "d", "b")]   # identical densities
    devices = [device("cuda:1", LLAMA, gpu_mb=20, host_mb=10, prewarm_mb=500),
               device("cuda:0", LLAMA, gpu_mb=10, host_mb=0, prewarm_mb=500)]
    plans = {plan(snap(list(fs), list(ds))) for fs in itertools.permutations(functions)
             for ds in itertools.permutations(devices)}
    assert len(plans) == 1
    (p,) = plans
    # ties go by name: a and b get GPU (cuda:0 first), then c; d lands in host memory
    assert [(a.function, a.device, a.tier) for a in p.adapters] == [
        ("a", "cuda:0", "gpu"), ("b", "cuda:1", "gpu"), ("c", "cuda:1", "gpu"), ("d", "cuda:1", "host")]


def test_zero_rate_functions_take_no_memory() -> None:
    p = plan(snap([fn("new", 0.0)], [device("cuda:0", LLAMA, gpu_mb=100, host_mb=100, prewarm_mb=100)]))
    assert p.adapters == () and p.runtimes_for("llama", "cuda:0") == 1


@pytest.mark.parametrize("bad", [
    lambda: fn("x", -1.0), lambda: fn("x", math.nan), lambda: fn("x", 1.0, mb=0),
    lambda: fn("x", 1.0, gpu_s=math.inf), lambda: ResidentBackbone("b", 0, 1.0),
    lambda: device("d", LLAMA, gpu_mb=-1), lambda: device("d", LLAMA, LLAMA),
    lambda: snap([fn("x", 1.0), fn("x", 2.0)], []), lambda: snap([], [], refill_s=0.0),
    lambda: snap([], [], min_prewarmed_per_backbone=-1),
])
def test_bad_snapshots_are_refused(bad) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError):
        bad()


def test_poisson_tail() -> None:
    assert poisson_tail(0.0, 1) == 0.0 and poisson_tail(3.0, 0) == 1.0
    assert poisson_tail(2.0, 1) == pytest.approx(1 - math.exp(-2.0))
    assert poisson_tail(2.0, 3) == pytest.approx(1 - math.exp(-2.0) * (1 + 2.0 + 2.0))
    assert poisson_tail(2000.0, 5) == pytest.approx(1.0)   # no underflow for large means


def test_rate_estimate_follows_the_arrivals() -> None:
    steady = [i * 0.5 for i in range(2400)]   # 2/s for 20 minutes
    now = steady[-1]
    assert estimate_rate_per_s(steady, now, time_constant_s=60) == pytest.approx(2.0, rel=0.02)
    assert estimate_rate_per_s([], now) == 0.0
    # the stream stopped: the estimate fades within a few time constants
    assert estimate_rate_per_s(steady, now + 300, time_constant_s=60) < 0.02
    # a burst counts at once; arrivals in the future (another clock) do not count
    assert estimate_rate_per_s([now] * 30, now, time_constant_s=10) == pytest.approx(3.0)
    assert estimate_rate_per_s([now + 5], now) == 0.0
    with pytest.raises(ValueError):
        estimate_rate_per_s(steady, now, time_constant_s=0)
