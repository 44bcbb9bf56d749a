"""Warm pool of process sandboxes: generic runtime processes pre-started with the libraries
imported, each specialised on demand into one function's instance (the pool itself:
``warm_pool``; the runtime: ``slfaas.functions.prewarm``).

A pool process gets the isolation of any process instance: its own session (the node kills
its whole group), PR_SET_PDEATHSIG (it asks for it first thing, and is forked from the
factory's long-lived spawner thread, so it dies with the node, not with a thread), and only
the node's filtered environment (``node_environ``), as no function is known yet. At
specialisation the function's full environment replaces it and the backbone memfd arrives as a
read-only descriptor (SCM_RIGHTS), exactly what a cold-started process inherits. A process
sees the node's filesystem anyway, so no file descriptors are sent: the runtime uses the
paths of the environment (code dir, base model dir, Runtime API socket) and starts in the
code dir, as a cold-started one does.

The cold path is taken instead when the spec's interpreter or entry point is not the pool's,
or when the function's environment changes a variable read at import time (``OMP_*``,
``TORCH_*``, ...): the pool process imported torch with the node's values.
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from slfaas.gpu_node.sandboxes.base import LogSink, SandboxSpec
from slfaas.runtime_contract import ENV_BACKBONE_FD, ENV_NODE_PID, ENV_POOL_SOCKET
from slfaas.gpu_node.sandboxes.warm_pool import Handover, PoolLauncher, PoolSandbox, WarmPool

if TYPE_CHECKING:
    from slfaas.gpu_node.sandboxes.process import ProcessSandbox, ProcessSandboxFactory

# Read while torch/transformers import (thread pools, allocators, library paths): a function
# that sets one differently from the node cannot use a runtime that imported without it.
_IMPORT_TIME_ENV_PREFIXES = ("OMP_", "MKL_", "TORCH_", "PYTORCH_", "CUDA_", "NVIDIA_", "NCCL_", "NVSHMEM_")
_IMPORT_TIME_ENV = frozenset({"PYTHONPATH", "LD_LIBRARY_PATH", "LD_PRELOAD", "PYTHONHASHSEED", "VIRTUAL_ENV",
                              "HF_HOME", "TRANSFORMERS_CACHE"})


class ProcessPoolLauncher(PoolLauncher):
    kind = "process"
    supports_cuda = True

    def __init__(self, factory: "ProcessSandboxFactory", base_env: Callable[[], dict[str, str]]):
        """``base_env``: what every runtime starts with before its function is known (the node's
        filtered environment and the fixed runtime variables)."""
        self.factory = factory
        self.base_env = base_env
        self.python = sys.executable
        self._env_at_import: dict[str, str] = {}

    @property
    def work_dir(self) -> Path:
        return self.factory.work_dir

    def pool_env(self, slot_dir: Path) -> dict[str, str]:
        env = self.base_env()
        env.update({ENV_NODE_PID: str(os.getpid()), ENV_POOL_SOCKET: str(slot_dir / "pool.sock")})
        return env

    def launch(self, sid: str, slot_dir: Path, log_sink: LogSink,
               closers: tuple[Callable[[], None], ...]) -> "ProcessSandbox":
        env = self.pool_env(slot_dir)
        self._env_at_import = {k: v for k, v in env.items() if _import_time(k)}
        # cwd: the slot's own directory (the runtime moves to the code dir once specialised)
        return self.factory.spawn((self.python, "-m", "slfaas.functions.prewarm"), env, slot_dir, (), log_sink)

    def plan(self, spec: SandboxSpec) -> Handover | None:
        if tuple(spec.argv) != (self.python, "-m", "slfaas.functions"):
            return None
        wanted = {k: v for k, v in spec.env.items() if _import_time(k)}
        if wanted != self._env_at_import:
            return None
        return Handover(link_files=False)

    def prepare(self, slot_dir: Path, sandbox: PoolSandbox, spec: SandboxSpec) -> dict[str, str]:
        env = dict(spec.env)
        env.pop(ENV_BACKBONE_FD, None)  # the runtime's own number for the descriptor it receives
        return env

    def finish(self, slot_dir: Path, sandbox: PoolSandbox, spec: SandboxSpec) -> None:
        shutil.rmtree(slot_dir, ignore_errors=True)  # only its (now unlinked) pool socket lived there


def _import_time(name: str) -> bool:
    return name in _IMPORT_TIME_ENV or name.startswith(_IMPORT_TIME_ENV_PREFIXES)


def process_warm_pool(factory: "ProcessSandboxFactory", size: int,
                      base_env: Callable[[], dict[str, str]]) -> WarmPool:
    return WarmPool(ProcessPoolLauncher(factory, base_env), size)
