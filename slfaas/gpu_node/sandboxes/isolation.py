"""Isolation of the process sandbox: each instance in its own namespaces as its own user.

An instance's command is, outermost first::

    sh -c 'echo $$ > …/cgroup.procs && exec "$@"'   join its memory cgroup (``memlimit``)
    prlimit --nproc=4096 [--data=MemorySize]        per-uid process count (a fork bomb stops)
    bwrap --unshare-pid,ipc,net,uts,cgroup …        its view of the machine (``bwrap``)
      setpriv --reuid=U --regid=U …                 drop to its own uid, no capabilities
        python -m slfaas.functions                  the runtime (pid 2 of its PID namespace)

Findings on the hosts (Linux 6.18, Debian 12, bubblewrap 0.8.0, root; cgroup v1 here):
- bwrap as root without a user namespace creates PID, IPC, network, UTS and cgroup
  namespaces; ``--unshare-all`` also creates a user namespace that maps only uid 0, after
  which no other uid can be entered (setresuid: EINVAL), hence the namespaces one by one.
- bwrap's ``--uid`` needs a user namespace, and bwrap writes its map onto the caller's own
  uid: as root that makes the sandbox's kuid 0, the host's root. So the uid is dropped inside
  with setpriv (kuid U outside too; no capabilities, NoNewPrivs); it cannot reach anything
  its uid cannot.
- The other order (setpriv to U, then an unprivileged bwrap with ``--unshare-user
  --disable-userns``) works here too and would also forbid nested user namespaces, but
  bwrap then resolves every bind source as U: a Python under /root (0700) or a code dir
  under a private data dir cannot be mounted. Nested user namespaces stay possible as for
  any unprivileged user of the host; they give no view of anything the sandbox lacks.
- A fresh procfs in the new PID namespace shows the sandbox's processes only (bwrap's init,
  root-owned and unreadable, and the runtime), so no other /proc/PID/{environ,mem}.
- The network namespace has only its own loopback: the node's API on 127.0.0.1 and abstract
  Unix sockets of the host are out of reach; the Runtime API socket is bind-mounted as a
  file (a read-only mount still connects) and owned by U, mode 0600.
- Inherited descriptors survive sh, prlimit, bwrap and setpriv (the backbone memfd: same
  number, ``pass_fds``). A descriptor re-opened through /proc/self/fd is checked against
  the file's mode, so handed-over code and model files must be world-readable (they are).
- Lifetime: killing bwrap (SIGTERM or SIGKILL) kills its PID namespace's init
  (``--die-with-parent``), and the kernel then kills every process in the namespace,
  setsid() grandchildren included; bwrap also dies with the node's spawner thread. A
  runtime killed by signal N makes bwrap exit with 128+N (reported as -N).
- The uid is a second handle on everything the sandbox started: before a uid is released
  every process still running as it is killed (``uids.sweep``).
"""
from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

from slfaas import runtime_contract as rc
from slfaas.errors import NodeError
from slfaas.gpu_node.sandboxes import bwrap
from slfaas.gpu_node.sandboxes.memlimit import MemoryBox, MemoryControl, memory_control
from slfaas.gpu_node.sandboxes.uids import UidAllocator

log = logging.getLogger(__name__)

BWRAP_ENV = "SLFAAS_BWRAP"
# Where `make install` unpacks bubblewrap's Debian package on a host without a registry.
BWRAP_UNPACKED = Path.home() / ".cache" / "slfaas" / "bubblewrap" / "usr" / "bin" / "bwrap"


class IsolationUnavailable(NodeError):
    """This host cannot isolate process sandboxes (the message says why, in one line)."""


@dataclass(frozen=True)
class Tools:
    bwrap: str
    setpriv: str
    prlimit: str
    version: str


def find_tools() -> Tools:
    """The programs an isolated sandbox needs, or IsolationUnavailable naming what is missing."""
    if os.geteuid() != 0:
        raise IsolationUnavailable(f"isolating instances needs root (each runs as its own uid); "
                                   f"this server runs as uid {os.geteuid()}")
    explicit = os.environ.get(BWRAP_ENV)
    if explicit and not os.access(explicit, os.X_OK):
        raise IsolationUnavailable(f"{BWRAP_ENV}={explicit} is not an executable file")
    found = explicit or shutil.which("bwrap") or (str(BWRAP_UNPACKED) if os.access(BWRAP_UNPACKED, os.X_OK) else None)
    if not found:
        raise IsolationUnavailable("bubblewrap (bwrap) is not installed: `make install` installs it "
                                   f"(apt-get install bubblewrap), or set {BWRAP_ENV} to its path")
    setpriv, prlimit = shutil.which("setpriv"), shutil.which("prlimit")
    if not setpriv or not prlimit:
        raise IsolationUnavailable("setpriv and prlimit (util-linux) are needed and not found")
    out = subprocess.run([found, "--version"], capture_output=True, text=True, timeout=10)
    return Tools(found, setpriv, prlimit, out.stdout.strip() or "bubblewrap ?")


class HostIsolation:
    """What the node uses to isolate every process sandbox; ``probe`` checks that it works."""

    def __init__(self, tools: Tools, memory: MemoryControl, uids: UidAllocator, python: str):
        self.tools = tools
        self.memory = memory
        self.uids = uids
        self.python = python
        self.roots, self.pythonpath = bwrap.python_mounts(python)

    @classmethod
    def probe(cls, python: str) -> "HostIsolation":
        tools = find_tools()
        isolation = cls(tools, memory_control(), UidAllocator(), python)
        try:
            isolation.check()
        except BaseException:
            isolation.close()
            raise
        return isolation

    def describe(self) -> str:
        return (f"process sandbox: {self.tools.version} ({self.tools.bwrap}): each instance as its own uid "
                f"(from {self.uids.first}) in its own PID, IPC, network, UTS and mount namespaces; "
                f"MemorySize enforced by {self.memory.description}")

    def check(self) -> None:
        """Start one empty sandbox: namespaces, mounts and the uid drop all work here."""
        jail = self.jail("probe", 256)
        try:
            argv = jail.command(bwrap.bwrap_argv(self.tools.bwrap, self.roots, [], "/", cuda=False),
                                [self.python, "-c", "import os; print(os.getuid())"])
            out = subprocess.run(argv, capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})
        finally:
            jail.release()
        if out.returncode != 0 or out.stdout.strip() != str(jail.uid):
            why = (out.stderr.strip().splitlines() or [f"exit status {out.returncode}"])[-1]
            raise IsolationUnavailable(f"a test sandbox failed here: {why}")

    def env(self, env: Mapping[str, str]) -> dict[str, str]:
        """A runtime's environment with the node's paths replaced by the sandbox's."""
        return bwrap.sandbox_env(env, self.pythonpath, self.python)

    def jail(self, name: str, memory_mb: int) -> "Jail":
        """A uid and a memory box for one sandbox (released by ``Jail.release``)."""
        uid = self.uids.allocate()
        try:
            box = self.memory.box(f"{name}-{uid}", memory_mb)
        except BaseException:
            self.uids.release(uid)
            raise
        return Jail(self, uid, box, memory_mb)

    def close(self) -> None:
        self.memory.close()


class Jail:
    """One sandbox's confinement: its uid, its memory box, its command line."""

    def __init__(self, host: HostIsolation, uid: int, box: MemoryBox, memory_mb: int):
        self.host = host
        self.uid = uid
        self.box = box
        self.memory_mb = memory_mb
        self.cleanups: tuple[Callable[[], None], ...] = ()   # run at release (after the sandbox ended)
        self._released = threading.Lock()
        self._done = False

    def command(self, bwrap_part: list[str], argv: list[str]) -> list[str]:
        limits = [self.host.tools.prlimit, f"--nproc={bwrap.MAX_PROCESSES}:{bwrap.MAX_PROCESSES}",
                  *self.box.rlimits(), "--"]
        return [*self.box.command_prefix(), *limits, *bwrap_part, "--", *bwrap.setpriv_argv(self.host.tools.setpriv, self.uid), *argv]

    def own(self, path: Path) -> None:
        """Make a socket connectable by this sandbox's uid alone."""
        os.chown(path, self.uid, self.uid)
        os.chmod(path, 0o600)

    def instance(self, argv: tuple[str, ...] | list[str], env: Mapping[str, str], code_dir: Path,
                 runtime_socket: Path) -> tuple[list[str], dict[str, str]]:
        """(command, environment) of a cold-started instance."""
        if env.get(rc.ENV_BACKBONE_IPC):
            raise IsolationUnavailable("a backbone shared through a legacy CUDA IPC handle cannot be opened by a "
                                       "sandbox running as its own uid; run the server with --insecure-sandbox")
        self.own(runtime_socket)
        cuda = env.get(rc.ENV_DEVICE, "cpu").startswith("cuda")
        part = bwrap.bwrap_argv(self.host.tools.bwrap, self.host.roots,
                                bwrap.instance_binds(code_dir, runtime_socket, env), bwrap.TASK_DIR, cuda)
        return self.command(part, list(argv)), self.env(env)

    def pool(self, slot_dir: Path, env: Mapping[str, str], cuda: bool = False,
             model_dir: Path | None = None) -> tuple[list[str], dict[str, str]]:
        """(command, environment) of a warm-pool runtime: its slot at /run/slfaas; ``cuda``: the
        GPU's device nodes too (it may become a CUDA function's instance); ``model_dir``: a
        pre-warmed runtime's base model (config, tokenizer), which it reads before any function."""
        self.own(slot_dir / "pool.sock")
        binds = ["--ro-bind", str(slot_dir), bwrap.RUN_DIR]
        if model_dir is not None:
            binds += bwrap.model_binds(model_dir)
        part = bwrap.bwrap_argv(self.host.tools.bwrap, self.host.roots, binds, "/tmp", cuda=cuda)
        env = {**self.env(env), rc.ENV_POOL_SOCKET: f"{bwrap.RUN_DIR}/pool.sock"}
        return self.command(part, [self.host.python, "-m", "slfaas.functions.prewarm"]), env

    def env(self, env: Mapping[str, str]) -> dict[str, str]:
        return self.host.env(env)

    def set_memory(self, memory_mb: int, pids: list[int]) -> None:
        self.box.set_limit(memory_mb, pids)
        self.memory_mb = memory_mb

    def exit_note(self) -> str | None:
        """What to tell the function's log about how the sandbox ended, if anything."""
        if self.box.oom_kills():
            return (f"instance exceeded its memory limit of {self.memory_mb} MB (MemorySize) "
                    f"and was OOM-killed")
        return None

    def release(self) -> None:
        """Once its sandbox has ended: kill what is left, delete the box, free the uid."""
        with self._released:
            if self._done:
                return
            self._done = True
        self.box.remove()
        self.host.uids.release(self.uid)
        for cleanup in self.cleanups:
            try:
                cleanup()
            except Exception:
                log.exception("sandbox cleanup failed")


def descendant(pid: int, depth: int, timeout_s: float = 5.0) -> int | None:
    """The first child ``depth`` levels below ``pid`` (bwrap → its init → the runtime), once it
    exists; None if the chain ended first."""
    deadline = time.monotonic() + timeout_s
    current = pid
    for _ in range(depth):
        while True:
            try:
                with open(f"/proc/{current}/task/{current}/children") as fh:
                    children = [int(c) for c in fh.read().split()]
            except OSError:
                return None
            if children:
                current = min(children)
                break
            if time.monotonic() > deadline:
                return None
            time.sleep(0.002)
    return current


def exit_status(code: int) -> int:
    """bwrap reports a command killed by signal N as 128+N: give it the usual -N."""
    if 128 < code < 128 + signal.NSIG:
        return -(code - 128)
    return code
