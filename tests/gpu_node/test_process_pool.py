"""The process warm pool, with real processes: a pre-started generic runtime (libraries
imported) becomes a function's instance and answers exactly as a cold-started process does;
the pool refills, replaces a pool process that died, and leaves nothing behind at shutdown."""
from __future__ import annotations

import json
import logging
import os
import re
import signal
import sys
from pathlib import Path

import pytest

from slfaas.gpu_node.builder import SandboxSettings, build_node
from slfaas.gpu_node.config import NodeConfig
from slfaas.gpu_node.node import Node
from slfaas.gpu_node.preloader import PreloadConfig
from slfaas.gpu_node.sandboxes.base import SandboxSpec
from slfaas.gpu_node.sandboxes.process_pool import ProcessPoolLauncher
from tests.gpu_node.fakes import make_request, make_spec, wait_until
from tests.procs import pool_runtimes

EVENT = {"prompt": "dear sir", "max_tokens": 8, "temperature": 0}


def pool_pids() -> set[int]:
    """This test process's pool runtimes (unspecialised, or specialised: the same process)."""
    return pool_runtimes(os.getpid())


def _ready(caplog: pytest.LogCaptureFixture, n: int, before: set[int] = frozenset()) -> int:  # type: ignore[assignment]
    """Wait for the ``n``-th "ready" of this test's pool and return the pid of the pool process
    that is not in ``before``."""
    def ready_pid() -> int | None:
        ready = sum(1 for r in caplog.records if re.search(r"warm-pool process \w+ ready", r.getMessage()))
        pids = pool_pids() - before
        return next(iter(pids)) if ready >= n and len(pids) == 1 else None
    assert wait_until(ready_pid, 120, 0.1), f"no warm-pool process became ready ({n})"
    pid = ready_pid()
    assert pid is not None
    return pid


@pytest.fixture
def make_agent(tmp_path: Path, caplog: pytest.LogCaptureFixture):  # type: ignore[no-untyped-def]
    agents: list[Node] = []

    caplog.set_level(logging.INFO, logger="slfaas.gpu_node.sandboxes.warm_pool")

    def make(warm_pool: int) -> Node:
        # built as the server builds it (the pool attached by the builder, the meter subscribed),
        # with nothing pre-warmed: this is the generic pool's test (tests/integration/test_prewarmed.py)
        agent = build_node(NodeConfig(data_dir=tmp_path / f"node{len(agents)}", keep_alive_s=600),
                           SandboxSettings("process", warm_pool=warm_pool),
                           preload=PreloadConfig(min_prewarmed_per_backbone=0, prewarm_budget_mb=0)).node
        agents.append(agent)
        return agent

    yield make
    for a in agents:
        a.shutdown()


def _code(adapter: Path, tmp_path: Path) -> Path:
    """The adapter as the code store holds it: world-readable files (an isolated sandbox's own
    uid reads them; peft writes its safetensors 0600)."""
    import shutil

    code = Path(shutil.copytree(adapter, tmp_path / f"code-{adapter.name}"))
    for f in code.iterdir():
        f.chmod(0o644)
    return code


def _sandbox(agent: Node, instance_id: str):  # type: ignore[no-untyped-def]
    inst = agent.table.get(instance_id)
    assert inst is not None
    return inst.sandbox


def test_pooled_process_answers_like_a_cold_started_one(make_agent, tiny_assets, tmp_path,  # type: ignore[no-untyped-def]
                                                        caplog) -> None:
    agent = make_agent(1)
    pool_pid = _ready(caplog, 1)
    assert agent.sandboxes.warm_count() == 1
    # a real runtime (torch imported) holds ~0.4 GB: MemorySize is enforced in the isolated sandbox
    spec = make_spec(tiny_assets.base, _code(tiny_assets.adapter_a, tmp_path), name="pooled", timeout_s=120,
                     memory_mb=1024)
    pooled = agent.invoke(make_request(spec, EVENT))
    assert pooled.function_error is None, pooled.payload
    assert pooled.cold_start is True
    (info,) = [i for i in agent.describe().instances if i.function_name == "pooled"]
    assert info.pid == pool_pid  # the pre-started process itself became the instance
    sandbox = _sandbox(agent, pooled.instance_id)
    assert sandbox.preloaded is True
    assert pooled.usage is not None and pooled.usage.preload_tier == "pool"
    # Its output goes to the function's log once specialised (the runtime's own init line too).
    log_text = agent.logs("pooled").text
    assert "warm-pool runtime specialised for pooled" in log_text and "init done" in log_text

    # The pool refills: a new generic process, while the taken one serves its function.
    refill_pid = _ready(caplog, 2, before={pool_pid})
    assert refill_pid != pool_pid and agent.sandboxes.warm_count() == 1
    warm = agent.invoke(make_request(spec, EVENT))
    assert warm.cold_start is False and json.loads(warm.payload)["text"] == json.loads(pooled.payload)["text"]

    # A plain cold-started process (no pool) gives the same greedy answer.
    cold_agent = make_agent(0)
    cold = cold_agent.invoke(make_request(spec, EVENT))
    assert cold.function_error is None and cold.cold_start is True
    assert _sandbox(cold_agent, cold.instance_id).preloaded is False
    assert cold.usage.preload_tier == "cold"
    assert json.loads(cold.payload)["text"] == json.loads(pooled.payload)["text"]
    # ...and the pool skipped the imports that the cold start paid.
    assert pooled.init_duration_ms is not None and cold.init_duration_ms is not None
    assert pooled.init_duration_ms < cold.init_duration_ms / 2, (pooled.init_duration_ms, cold.init_duration_ms)


def test_dead_pool_process_is_replaced_and_shutdown_ends_the_pool(make_agent, tiny_assets, tmp_path,  # type: ignore[no-untyped-def]
                                                                  caplog) -> None:
    agent = make_agent(1)
    first = _ready(caplog, 1)
    os.kill(first, signal.SIGKILL)  # dies before any function took it
    second = _ready(caplog, 2, before={first})
    assert second != first and first not in pool_pids()
    assert agent.sandboxes.warm_count() == 1

    spec = make_spec(tiny_assets.base, _code(tiny_assets.adapter_b, tmp_path), name="after-death", timeout_s=120,
                     memory_mb=1024)
    result = agent.invoke(make_request(spec, EVENT))
    assert result.function_error is None, result.payload
    assert _sandbox(agent, result.instance_id).preloaded is True
    assert [i.pid for i in agent.describe().instances] == [second]

    third = _ready(caplog, 3, before={first, second})
    agent.shutdown()
    assert wait_until(lambda: not pool_pids(), 10), pool_pids()  # the instance and the idle pool process
    assert third not in pool_pids()


def test_cold_path_when_the_pool_runtime_cannot_serve_the_spec(tmp_path: Path) -> None:
    """No processes: which specs the process launcher refuses (they start cold instead)."""
    launcher = ProcessPoolLauncher.__new__(ProcessPoolLauncher)
    launcher.python = sys.executable
    launcher._env_at_import = {"OMP_NUM_THREADS": "2", "PYTHONPATH": "/x"}

    def spec(argv: tuple[str, ...], **env: str) -> SandboxSpec:
        return SandboxSpec("i", "f", "$LATEST", argv, {"SLFAAS_BACKBONE_FD": "7", **env}, tmp_path,
                           tmp_path / "s.sock", 128)

    same = {"OMP_NUM_THREADS": "2", "PYTHONPATH": "/x", "MY_VAR": "anything"}
    assert launcher.plan(spec((sys.executable, "-m", "slfaas.functions"), **same)) is not None
    assert launcher.plan(spec(("/other/python", "-m", "slfaas.functions"), **same)) is None
    assert launcher.plan(spec((sys.executable, "-m", "slfaas.functions"),
                              **{**same, "OMP_NUM_THREADS": "1"})) is None  # torch imported with 2
    assert launcher.plan(spec((sys.executable, "-m", "slfaas.functions"),
                              **{**same, "TORCH_HOME": "/t"})) is None


def test_cuda_specs_reach_only_a_launcher_that_supports_them(tmp_path: Path) -> None:
    """A CUDA backbone travels as VMM descriptors (any pool started with the GPU reachable can
    take it) or as a legacy IPC file path (only a pool whose runtimes see the node's files); a
    pool started without the GPU takes no CUDA spec; a CPU spec needs its backbone fd."""
    from slfaas.gpu_node.sandboxes.warm_pool import WarmPool

    planned: list[str] = []

    class Launcher:
        supports_cuda = False
        cuda = False

        def plan(self, s: SandboxSpec):  # type: ignore[no-untyped-def]
            planned.append(s.instance_id)
            return None

    pool = WarmPool.__new__(WarmPool)
    pool.launcher = Launcher()  # type: ignore[assignment]
    pool.flavour = None

    def spec(iid: str, **env: str) -> SandboxSpec:
        return SandboxSpec(iid, "f", "$LATEST", (sys.executable, "-m", "slfaas.functions"), env, tmp_path,
                           tmp_path / "s.sock", 128)

    ipc = {"SLFAAS_DEVICE": "cuda:0", "SLFAAS_BACKBONE_IPC": "/tmp/x.ipc"}
    vmm = {"SLFAAS_DEVICE": "cuda:0", "SLFAAS_BACKBONE_VMM_FD": "7", "SLFAAS_BACKBONE_TABLE_FD": "8"}
    assert pool.take(spec("no-gpu-vmm", **vmm), print) is None       # started without the GPU
    pool.launcher.cuda = True
    assert pool.take(spec("ipc-unsupported", **ipc), print) is None
    assert pool.take(spec("vmm-ok", **vmm), print) is None
    pool.launcher.supports_cuda = True
    assert pool.take(spec("ipc-ok", **ipc), print) is None
    assert pool.take(spec("cuda-no-backbone", SLFAAS_DEVICE="cuda:0"), print) is None
    assert pool.take(spec("cpu-no-fd", SLFAAS_DEVICE="cpu"), print) is None
    assert pool.take(spec("cpu-ok", SLFAAS_DEVICE="cpu", SLFAAS_BACKBONE_FD="7"), print) is None
    assert planned == ["vmm-ok", "ipc-ok", "cpu-ok"]
    assert ProcessPoolLauncher.supports_cuda is True
