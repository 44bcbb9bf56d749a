"""The sandbox ABC: how the node starts and stops one function instance, whatever isolates it.

A sandbox only runs the runtime process; invocations reach it through the Runtime API socket,
so backends differ in isolation (process, container), never in how work is handed over.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Protocol, Sequence

LogSink = Callable[[str], None]


@dataclass(frozen=True)
class SandboxSpec:
    instance_id: str
    function_name: str
    version: str
    argv: tuple[str, ...]
    env: Mapping[str, str]
    code_dir: Path
    runtime_socket: Path
    memory_mb: int
    inherit_fds: tuple[int, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)


class Sandbox(ABC):
    """One running instance. ``wait`` returns the exit status (negative: killed by signal)."""

    preloaded: bool = False   # taken from a warm pool of pre-started generic runtimes (billing: tier)

    @property
    @abstractmethod
    def pid(self) -> int | None: ...

    @abstractmethod
    def wait(self, timeout_s: float | None = None) -> int | None:
        """Block until the sandbox exits (or the timeout passes: None)."""

    @abstractmethod
    def stop(self, grace_s: float = 2.0) -> None:
        """Terminate, escalating to a kill after ``grace_s``; idempotent."""

    @abstractmethod
    def kill(self) -> None:
        """Kill at once (timeouts, crashes)."""


class PoolSource(Protocol):
    """A warm pool of pre-started generic runtimes (``sandboxes.warm_pool.WarmPool``)."""

    size: int

    def take(self, spec: SandboxSpec, log_sink: LogSink) -> Sandbox | None: ...

    def held(self) -> int: ...

    def resize(self, size: int) -> None: ...

    def close(self) -> Sequence[object]: ...


class SandboxFactory(ABC):
    name: str
    pool: PoolSource | None = None

    @abstractmethod
    def start(self, spec: SandboxSpec, log_sink: LogSink) -> Sandbox:
        """Start the runtime described by ``spec``; its output lines go to ``log_sink``."""

    def attach_pool(self, pool: PoolSource) -> None:
        """Serve cold starts from ``pool`` when it has a runtime ready (the builder makes it)."""
        self.pool = pool

    def take_pooled(self, spec: SandboxSpec, log_sink: LogSink) -> Sandbox | None:
        return self.pool.take(spec, log_sink) if self.pool is not None else None

    def close(self) -> None:
        """Release backend resources (and reap anything left over)."""

    def warm_count(self) -> int:
        """Pre-started generic runtimes held now (a warm pool): pre-loading overhead."""
        return self.pool.held() if self.pool is not None else 0
