"""Warm pool of process sandboxes: generic runtime processes pre-started with the libraries
imported, each specialised on demand into one function's instance (the pool itself:
``warm_pool``; the runtime: ``slfaas.functions.prewarm``).

A pool process gets the isolation of any process instance: its own session (the node kills
its whole group), PR_SET_PDEATHSIG (it asks for it first thing, and is forked from the
factory's long-lived spawner thread, so it dies with the node, not with a thread), and only
the node's filtered environment (``lifecycle.runtime_env``), as no function is known yet. At
specialisation the function's full environment replaces it and the backbone memfd arrives as a
read-only descriptor (SCM_RIGHTS), exactly what a cold-started process inherits.

Isolated (the default), a pool process starts in its own sandbox as its own uid, with its
slot directory (its pool socket) at /run/slfaas and a pool-sized memory bound; as no
function is known, nothing of one is mounted. At specialisation, as in the Docker pool, the
instance's Runtime API socket is hard-linked into the slot directory (and given to the
sandbox's uid), the function's code files and the base model's config/tokenizer files come
as descriptors (``file_handover``), and the memory bound becomes the function's MemorySize.
Unisolated (``--insecure-sandbox``), the process sees the node's filesystem, so no file
descriptors are sent: the runtime uses the paths of the environment and starts in the code dir.

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
from slfaas.gpu_node.sandboxes.pool_support import Flavour, Handover, PoolLauncher, PoolSandbox, Prewarm, file_handover
from slfaas.gpu_node.sandboxes.warm_pool import WarmPool
from slfaas.runtime_contract import ENV_BASE_MODEL_DIR, ENV_NODE_PID, ENV_POOL_SOCKET, HANDOVER_FD_ENV

if TYPE_CHECKING:
    from slfaas.gpu_node.sandboxes.isolation import HostIsolation
    from slfaas.gpu_node.sandboxes.process import ProcessSandbox, ProcessSandboxFactory

# Read while torch/transformers import (thread pools, allocators, library paths): a function
# that sets one differently from the node cannot use a runtime that imported without it.
_IMPORT_TIME_ENV_PREFIXES = ("OMP_", "MKL_", "TORCH_", "PYTORCH_", "CUDA_", "NVIDIA_", "NCCL_", "NVSHMEM_")
_IMPORT_TIME_ENV = frozenset({"PYTHONPATH", "LD_LIBRARY_PATH", "LD_PRELOAD", "PYTHONHASHSEED", "VIRTUAL_ENV",
                              "HF_HOME", "TRANSFORMERS_CACHE"})
# An isolated pool runtime's bound until specialised (then: the function's MemorySize); a CUDA
# runtime maps the driver's and torch's CUDA libraries and holds pinned buffers: more.
POOL_MEMORY_MB = 2048
CUDA_POOL_MEMORY_MB = 8192


class ProcessPoolLauncher(PoolLauncher):
    kind = "process"
    supports_cuda = True
    isolation: "HostIsolation | None" = None

    def __init__(self, factory: "ProcessSandboxFactory", base_env: Callable[[], dict[str, str]], cuda: bool = False):
        """``base_env``: what every runtime starts with before its function is known (the node's
        filtered environment and the fixed runtime variables); ``cuda``: the node's device is a
        GPU, so its runtimes must reach it."""
        self.factory = factory
        self.base_env = base_env
        self.cuda = cuda
        self.python = sys.executable
        self._env_at_import: dict[str, str] = {}
        self.isolation = factory.isolation
        # The CUDA backbone's IPC file is opened by path: an isolated runtime sees no such path.
        self.supports_cuda = self.isolation is None

    @property
    def work_dir(self) -> Path:
        return self.factory.work_dir

    def pool_env(self, slot_dir: Path) -> dict[str, str]:
        env = self.base_env()
        env.update({ENV_NODE_PID: str(os.getpid()), ENV_POOL_SOCKET: str(slot_dir / "pool.sock")})
        return env

    def launch(self, sid: str, slot_dir: Path, log_sink: LogSink,
               closers: tuple[Callable[[], None], ...], prewarm: Prewarm | None = None) -> "ProcessSandbox":
        env = self.pool_env(slot_dir)
        fds: tuple[int, ...] = ()
        model_dir = None
        if prewarm is not None:   # it attaches its backbone (descriptors inherited) and warms up now
            env.update(prewarm.env)
            fds = prewarm.inherit_fds
            model_dir = Path(prewarm.env[ENV_BASE_MODEL_DIR])
        isolation = self.isolation
        if isolation is None:
            self._env_at_import = {k: v for k, v in env.items() if _import_time(k)}
            # cwd: the slot's own directory (the runtime moves to the code dir once specialised)
            return self.factory.spawn((self.python, "-m", "slfaas.functions.prewarm"), env, slot_dir, fds, log_sink)
        jail = isolation.jail(f"pool-{sid}", CUDA_POOL_MEMORY_MB if self.cuda else POOL_MEMORY_MB)
        try:
            argv, env = jail.pool(slot_dir, env, cuda=self.cuda, model_dir=model_dir)
            jail.cleanups += closers   # its slot (linked Runtime API socket) lives as long as it does
            self._env_at_import = {k: v for k, v in env.items() if _import_time(k)}
            return self.factory.spawn(argv, env, Path("/"), fds, log_sink, jail)
        except BaseException:
            jail.release()
            raise

    def plan(self, spec: SandboxSpec) -> Handover | None:
        if tuple(spec.argv) != (self.python, "-m", "slfaas.functions"):
            return None
        isolation = self.isolation
        env = spec.env if isolation is None else isolation.env(spec.env)
        wanted = {k: v for k, v in env.items() if _import_time(k)}
        if wanted != self._env_at_import:
            return None
        return Handover(link_files=False) if isolation is None else file_handover(spec)

    def prepare(self, slot_dir: Path, sandbox: PoolSandbox, spec: SandboxSpec) -> dict[str, str]:
        jail = getattr(sandbox, "jail", None)
        if jail is None:
            env = dict(spec.env)
        else:
            jail.own(spec.runtime_socket)
            os.link(spec.runtime_socket, slot_dir / "runtime.sock")  # EXDEV: different filesystems → cold path
            jail.set_memory(spec.memory_mb, [sandbox.pid] if sandbox.pid else [])  # EBUSY: uses more → cold path
            env = jail.env(spec.env)
        for name in HANDOVER_FD_ENV:   # the runtime's own numbers for the descriptors it receives
            env.pop(name, None)
        return env

    def finish(self, slot_dir: Path, sandbox: PoolSandbox, spec: SandboxSpec) -> None:
        if getattr(sandbox, "jail", None) is None:
            shutil.rmtree(slot_dir, ignore_errors=True)  # only its (now unlinked) pool socket lived there


def _import_time(name: str) -> bool:
    return name in _IMPORT_TIME_ENV or name.startswith(_IMPORT_TIME_ENV_PREFIXES)


def process_warm_pool(factory: "ProcessSandboxFactory", size: int,
                      base_env: Callable[[], dict[str, str]], cuda: bool = False,
                      flavour: Flavour | None = None, prewarm: Callable[[], Prewarm] | None = None) -> WarmPool:
    """Generic runtimes, or (``flavour`` and ``prewarm``) runtimes pre-warmed for one backbone."""
    return WarmPool(ProcessPoolLauncher(factory, base_env, cuda), size, flavour, prewarm)
