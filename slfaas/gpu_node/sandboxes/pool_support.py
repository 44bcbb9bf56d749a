"""What a warm pool needs from a sandbox backend (``PoolLauncher``), the values it hands over
(``Handover``, ``Flavour``, ``Prewarm``), and the node-private work directories they use."""
from __future__ import annotations

import os
import shutil
import tempfile
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Protocol

from slfaas.gpu_node.sandboxes.base import LogSink, SandboxSpec
from slfaas.runtime_contract import ENV_BACKBONE_PRIVATE, ENV_BASE_MODEL_DIR, PRIVATE_CHECKPOINT


class PoolSandbox(Protocol):
    """What the pool needs of a backend's sandbox (``DockerSandbox``, ``ProcessSandbox``)."""

    preloaded: bool

    @property
    def pid(self) -> int | None: ...

    def wait(self, timeout_s: float | None = None) -> int | None: ...

    def kill(self) -> None: ...

    def stop(self, grace_s: float = 2.0) -> None: ...

    def set_sink(self, log_sink: LogSink) -> None: ...


@dataclass(frozen=True)
class Flavour:
    """What a pre-warmed pool's runtimes did before any function asked: attached this base
    model's backbone on this device, built empty LoRA slots and ran their warm-up forwards."""

    base_model: Path
    device: str


@dataclass(frozen=True)
class Prewarm:
    """How one pre-warmed runtime starts: extra environment and descriptors (its backbone's);
    ``owned_fds`` were made for it alone and are closed once it holds its copies."""

    env: Mapping[str, str]
    inherit_fds: tuple[int, ...] = ()
    owned_fds: tuple[int, ...] = ()


@dataclass(frozen=True)
class Handover:
    """Which of the function's files travel as descriptors. ``link_files`` False: the sandbox
    sees the node's filesystem (a process), so the runtime keeps the paths of ``spec.env``."""

    link_files: bool
    code_dir: Path = Path()
    task_files: tuple[str, ...] = ()
    model_dir: Path = Path()
    model_files: tuple[str, ...] = ()


class PoolLauncher(ABC):
    """The backend-specific half of a warm pool."""

    kind: str  # "container" or "process": named in log lines ("warm-pool process 1a2b3c4d ready")
    # A legacy CUDA IPC backbone is borrowed through its IPC file, read by path: only a backend
    # whose runtime sees the node's filesystem can take it (VMM descriptors travel to any).
    supports_cuda: bool = False
    cuda: bool = False        # its runtimes were started with the GPU reachable

    @property
    @abstractmethod
    def work_dir(self) -> Path:
        """Node-private directory under which each slot gets its own directory."""

    @abstractmethod
    def launch(self, sid: str, slot_dir: Path, log_sink: LogSink,
               closers: tuple[Callable[[], None], ...], prewarm: Prewarm | None = None) -> PoolSandbox:
        """Start ``python -m slfaas.functions.prewarm`` that connects to ``slot_dir/pool.sock``;
        ``closers`` are for a backend that cleans up when its sandbox ends; ``prewarm``: it
        pre-warms for a backbone (a backend that cannot raises ``NotImplementedError``)."""

    @abstractmethod
    def plan(self, spec: SandboxSpec) -> Handover | None:
        """How ``spec`` would be handed over, or None: this spec takes the cold path."""

    @abstractmethod
    def prepare(self, slot_dir: Path, sandbox: PoolSandbox, spec: SandboxSpec) -> dict[str, str]:
        """Ready the sandbox for ``spec`` (may raise: the slot is discarded, cold path);
        returns the runtime's environment."""

    def finish(self, slot_dir: Path, sandbox: PoolSandbox, spec: SandboxSpec) -> None:
        """After the message: the runtime is now this instance's (must not fail it)."""


def file_handover(spec: SandboxSpec) -> Handover:
    """The function's code files and the base model's non-weight files (config, tokenizer), for
    a sandbox that has none of them mounted; the weights come as the backbone descriptor (or,
    for an instance that loads its own from the checkpoint, as files too)."""
    from slfaas.gpu_node.sandboxes.bwrap import model_files

    model_dir = Path(spec.env.get(ENV_BASE_MODEL_DIR, ""))
    weights = spec.env.get(ENV_BACKBONE_PRIVATE) == PRIVATE_CHECKPOINT
    names = tuple(p.name for p in model_files(model_dir, weights))   # what a cold-started sandbox mounts
    return Handover(True, spec.code_dir, tuple(_files(spec.code_dir)), model_dir, names)


def proc_start_ticks(pid: int) -> str:
    """A process's start time in clock ticks: with the pid, it names one process (pids are reused)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def make_work_dir(prefix: str) -> Path:
    """A fresh node-private temp directory (mode 0700; short, for Unix socket paths), after
    removing those of node processes that are gone (kill -9 leaves them behind)."""
    for d in Path(tempfile.gettempdir()).glob(f"{prefix}*"):
        try:
            pid, start = (d / "node").read_text().split()
        except (OSError, ValueError):
            continue
        if proc_start_ticks(int(pid)) != start:
            shutil.rmtree(d, ignore_errors=True)
    work_dir = Path(tempfile.mkdtemp(prefix=prefix))
    (work_dir / "node").write_text(f"{os.getpid()} {proc_start_ticks(os.getpid())}")
    return work_dir


def _files(root: Path) -> list[str]:
    if not root.is_dir():
        return []
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and not p.is_symlink())
