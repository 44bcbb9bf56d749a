"""Warm pool of docker sandboxes: generic containers pre-started with the libraries imported,
each specialised on demand into one function's instance (the pool itself: ``warm_pool``).

The container was created before the function was known, so nothing of the function is
mounted into it. Instead, per slot, a private directory is mounted at ``/run/slfaas`` and
- the instance's Runtime API socket is hard-linked into it (a Unix socket is found by its
  inode, so the link reaches the node's server; both live under the node's temp dir);
- the node sends, over the slot's socket (SCM_RIGHTS), a read-only descriptor of the
  backbone and descriptors of the function's own code files and of the base model's
  config/tokenizer files, which the runtime links under its private /tmp;
- the container's memory limit is updated to the function's MemorySize, and the container
  is renamed after the instance.
On a GPU node the pool's containers get the GPU (``DockerSandboxFactory.gpu_options``) and the
arena's VMM descriptors arrive in the same message. A pre-warmed pool container (``prewarm``)
gets its backbone at start from a backbone socket in its slot directory (as a cold-started
container does) and the base model's config at ``/opt/slfaas/model``.
Limits of this path (a plain cold start is used instead): a legacy CUDA IPC backbone (read by
path), more than ~250 files, and a hard link between the temp dir's sockets must be possible. Pool containers keep
the labels they were created with (Docker cannot relabel): node identity and ``slfaas.pool``,
not the function's; their name carries the instance id.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from slfaas.gpu_node.sandboxes.base import LogSink, SandboxSpec
from slfaas.gpu_node.sandboxes.pool_support import Flavour, Handover, PoolLauncher, PoolSandbox, Prewarm, file_handover
from slfaas.gpu_node.sandboxes.warm_pool import WarmPool
from slfaas.runtime_contract import (BACKBONE_FD_ENV, ENV_BACKBONE_PATH, ENV_BASE_MODEL_DIR, ENV_POOL_SOCKET,
                                     ENV_RUNTIME_SOCKET)

if TYPE_CHECKING:
    from slfaas.gpu_node.sandboxes.docker import DockerSandboxFactory
    from slfaas.gpu_node.sandboxes.docker_sandbox import DockerSandbox

log = logging.getLogger(__name__)

_PASS_ENV_PREFIXES = ("OMP_", "MKL_", "TORCH_", "PYTORCH_")

__all__ = ["DockerPoolLauncher", "WarmPool", "docker_warm_pool"]


class DockerPoolLauncher(PoolLauncher):
    kind = "container"

    def __init__(self, factory: "DockerSandboxFactory", device: str = "cpu"):
        self.factory = factory
        self.device = device
        self.cuda = device.startswith("cuda")

    @property
    def work_dir(self) -> Path:
        return self.factory.work_dir

    def launch(self, sid: str, slot_dir: Path, log_sink: LogSink,
               closers: tuple[Callable[[], None], ...], prewarm: Prewarm | None = None) -> "DockerSandbox":
        from docker.types import Mount

        from slfaas.gpu_node.sandboxes.docker import MODEL_DIR, NO_TOOLKIT_GPUS, RUN_DIR
        from slfaas.gpu_node.sandboxes.docker_sandbox import BackboneHandout, DockerSandbox

        env = {k: v for k, v in os.environ.items() if k.startswith(_PASS_ENV_PREFIXES)}
        env.update({"HOME": "/tmp", "TMPDIR": "/tmp", "USER": "slfaas", "PYTHONUNBUFFERED": "1",
                    "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                    ENV_POOL_SOCKET: f"{RUN_DIR}/pool.sock", NO_TOOLKIT_GPUS[0]: NO_TOOLKIT_GPUS[1]})
        mounts = [Mount(RUN_DIR, str(slot_dir), type="bind", read_only=True)]
        handout = None
        if prewarm is not None:   # it attaches its backbone and warms up now
            env.update({k: v for k, v in prewarm.env.items() if k not in BACKBONE_FD_ENV})
            handed = BackboneHandout.descriptors(prewarm.env)
            if handed is None:
                raise NotImplementedError("a pre-warmed container borrows its backbone by descriptor only")
            handout = BackboneHandout(slot_dir / "backbone.sock", *handed)   # seen at RUN_DIR
            env[ENV_BACKBONE_PATH] = f"{RUN_DIR}/backbone.sock"
            mounts.append(Mount(MODEL_DIR, prewarm.env[ENV_BASE_MODEL_DIR], type="bind", read_only=True))
            env[ENV_BASE_MODEL_DIR] = MODEL_DIR
        closers = closers + ((handout.close,) if handout is not None else ())
        try:
            extra = self.factory.gpu_options(self.device, mounts, env, legacy_ipc=False) if self.cuda else {}
            memory_mb = self.factory.config.cuda_pool_memory_mb if self.cuda else self.factory.config.pool_memory_mb
            argv = self.factory.python_argv(["-m", "slfaas.functions.prewarm"], env, mounts)
            container, pid = self.factory.run_container(f"slfaas-pool-{sid}", argv, env, mounts, {"slfaas.pool": "1"},
                                                        memory_mb, **extra)
        except BaseException:
            if handout is not None:
                handout.close()
            raise
        sandbox = DockerSandbox(container, pid, log_sink, memory_mb, self.factory.forget, closers)
        self.factory.adopt(sandbox)
        return sandbox

    def plan(self, spec: SandboxSpec) -> Handover | None:
        return file_handover(spec)

    def prepare(self, slot_dir: Path, sandbox: PoolSandbox, spec: SandboxSpec) -> dict[str, str]:
        from slfaas.gpu_node.sandboxes.docker import NO_TOOLKIT_GPUS, RUN_DIR
        from slfaas.gpu_node.sandboxes.docker_sandbox import DockerSandbox

        assert isinstance(sandbox, DockerSandbox)
        os.chmod(spec.runtime_socket, 0o666)
        os.link(spec.runtime_socket, slot_dir / "runtime.sock")  # EXDEV: different filesystems → cold path
        sandbox.container.update(mem_limit=f"{spec.memory_mb}m", memswap_limit=f"{spec.memory_mb}m")
        env = self.factory.runtime_env(spec)
        env[ENV_RUNTIME_SOCKET] = f"{RUN_DIR}/runtime.sock"
        self.factory.python_argv([], env, [])  # the same PYTHONPATH/PATH as a cold-started container
        if self.cuda:   # what it was started with: its GPU is cuda:0 inside, the driver's libraries
            env.update(self.factory.gpu_plan(self.device).env)
            if self.factory.has_nvidia_toolkit():
                env.pop(NO_TOOLKIT_GPUS[0], None)
        return env

    def finish(self, slot_dir: Path, sandbox: PoolSandbox, spec: SandboxSpec) -> None:
        import docker.errors

        from slfaas.gpu_node.sandboxes.docker_sandbox import DockerSandbox

        assert isinstance(sandbox, DockerSandbox)
        sandbox.memory_mb = spec.memory_mb
        try:
            sandbox.container.rename(f"slfaas-{spec.instance_id}")
        except docker.errors.APIError as exc:
            log.debug("renaming %s: %s", sandbox.container.name, exc)


def docker_warm_pool(factory: "DockerSandboxFactory", size: int, device: str = "cpu",
                     flavour: Flavour | None = None, prewarm: Callable[[], Prewarm] | None = None) -> WarmPool:
    """Generic containers, or (``flavour`` and ``prewarm``) containers pre-warmed for one backbone."""
    return WarmPool(DockerPoolLauncher(factory, device), size, flavour, prewarm)
