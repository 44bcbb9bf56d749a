"""How a process sandbox holds an instance to its ``MemorySize``: a memory cgroup where one can
be used, else a per-process resource limit. Chosen once per node (``memory_control``).

- cgroup v1 (our CPU machines): a child of the node's own memory cgroup (so the node's own
  limits still bound it; the hierarchy's root when that is not writable), with
  ``memory.limit_in_bytes`` and, where swap is accounted, ``memory.memsw.limit_in_bytes``.
- cgroup v2 (the GPU machine): a child of the hierarchy's root (a cgroup that holds processes,
  such as the node's own, cannot enable controllers for children), ``memory.max`` and
  ``memory.swap.max`` 0.
Either way the kernel OOM-kills the instance alone when it outgrows its size (page cache is
reclaimed first; tmpfs pages under its /tmp count), and the node reads the OOM count to say so.
- ``RLIMIT_DATA`` where no cgroup can be used: private writable memory (heap, anonymous mmap)
  per process; an allocation past it fails (``MemoryError``) instead of a kill. Not
  ``RLIMIT_AS``: a CPU runtime maps 0.9 GB of address space for 0.4 GB resident after its
  imports (measured), and CUDA reserves far more, so an address-space limit would refuse
  working functions while a data limit bounds what an instance can actually take.

A process joins its cgroup before it starts anything: the sandbox's command begins with a
shell that writes its own pid into ``cgroup.procs`` and then execs the rest, so no child
can be forked outside it.
"""
from __future__ import annotations

import errno
import itertools
import logging
import os
import resource
import signal
import time
from abc import ABC, abstractmethod
from pathlib import Path

from slfaas.gpu_node.sandboxes.pool_support import proc_start_ticks

log = logging.getLogger(__name__)

_node_seq = itertools.count()
_JOIN_SCRIPT = 'echo $$ > "$0" && exec "$@"'   # sh -c SCRIPT PROCS_FILE CMD...
_DEFAULT_MOUNTINFO = Path("/proc/self/mountinfo")
_DEFAULT_PROC_CGROUP = Path("/proc/self/cgroup")


class MemoryBox(ABC):
    """One instance's memory bound."""

    def command_prefix(self) -> list[str]:
        """What the sandbox's command starts with so that it runs under the bound."""
        return []

    def rlimits(self) -> list[str]:
        """``prlimit`` options for the sandbox's processes."""
        return []

    @abstractmethod
    def set_limit(self, memory_mb: int, pids: list[int]) -> None:
        """Change the bound of a running sandbox (a warm-pool runtime becoming an instance)."""

    def oom_kills(self) -> int:
        """How often the kernel killed a process of this box for memory."""
        return 0

    def remove(self) -> None:
        """Kill whatever is left in the box and delete it (once its sandbox has ended)."""


class MemoryControl(ABC):
    """The node's way of bounding memory, described in one line for the server's log."""

    description: str

    @abstractmethod
    def box(self, name: str, memory_mb: int) -> MemoryBox: ...

    def close(self) -> None:
        """Remove the node's own directories (its boxes are removed by their sandboxes)."""


class RlimitMemory(MemoryControl):
    def __init__(self, why: str):
        self.description = f"RLIMIT_DATA per process (no memory cgroup: {why})"

    def box(self, name: str, memory_mb: int) -> MemoryBox:
        return _RlimitBox(memory_mb)


class _RlimitBox(MemoryBox):
    def __init__(self, memory_mb: int):
        self.memory_mb = memory_mb

    def rlimits(self) -> list[str]:
        limit = self.memory_mb << 20
        return [f"--data={limit}:{limit}"]

    def set_limit(self, memory_mb: int, pids: list[int]) -> None:
        self.memory_mb = memory_mb
        limit = memory_mb << 20
        for pid in pids:
            resource.prlimit(pid, resource.RLIMIT_DATA, (limit, limit))


class CgroupMemory(MemoryControl):
    """Boxes are directories under ``<parent>/slfaas-<node pid>-<its start time>-<n>``; ``v2``
    selects the file names."""

    def __init__(self, parent: Path, v2: bool):
        self.v2 = v2
        # one per node (several nodes may share a process: tests)
        self.dir = parent / f"slfaas-{os.getpid()}-{proc_start_ticks(os.getpid())}-{next(_node_seq)}"
        _reap_stale(parent)
        self.dir.mkdir(exist_ok=True)
        if v2:
            _write(self.dir / "cgroup.subtree_control", "+memory")
        self.description = f"cgroup {'v2' if v2 else 'v1'} memory controller under {self.dir}"

    def box(self, name: str, memory_mb: int) -> MemoryBox:
        path = self.dir / name
        path.mkdir()
        box = _CgroupBox(path, self.v2)
        try:
            box.set_limit(memory_mb, [])
        except BaseException:
            box.remove()
            raise
        return box

    def close(self) -> None:
        for child in self.dir.iterdir() if self.dir.is_dir() else ():
            if child.is_dir():
                _CgroupBox(child, self.v2).remove()
        _rmdir(self.dir)


class _CgroupBox(MemoryBox):
    def __init__(self, path: Path, v2: bool):
        self.path = path
        self.v2 = v2

    def command_prefix(self) -> list[str]:
        return ["/bin/sh", "-c", _JOIN_SCRIPT, str(self.path / "cgroup.procs")]

    def set_limit(self, memory_mb: int, pids: list[int]) -> None:
        limit = str(memory_mb << 20)
        if self.v2:
            _write(self.path / "memory.max", limit)
            if (self.path / "memory.swap.max").exists():
                _write(self.path / "memory.swap.max", "0")
            return
        # memory+swap (where swap is accounted) may never be below memory alone (EINVAL): when
        # raising, it goes first. EBUSY: more in use than the new limit.
        memsw = self.path / "memory.memsw.limit_in_bytes"
        try:
            _write(self.path / "memory.limit_in_bytes", limit)
        except OSError as exc:
            if exc.errno != errno.EINVAL or not memsw.exists():
                raise
            _write(memsw, limit)
            _write(self.path / "memory.limit_in_bytes", limit)
        if memsw.exists():
            _write(memsw, limit)

    def oom_kills(self) -> int:
        name = "memory.events" if self.v2 else "memory.oom_control"
        try:
            for line in (self.path / name).read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        except (OSError, ValueError):
            pass
        return 0

    def remove(self) -> None:
        _kill_members(self.path, self.v2)
        _rmdir(self.path)


def memory_control(mountinfo: Path = _DEFAULT_MOUNTINFO,
                   proc_cgroup: Path = _DEFAULT_PROC_CGROUP) -> MemoryControl:
    """The best bound this host allows the node (root) to set, tried in order: a v1 memory
    hierarchy under the node's own cgroup, then at its root; a v2 hierarchy at its root; else
    RLIMIT_DATA (with the reason in its description)."""
    mounts = _cgroup_mounts(mountinfo)
    own = _own_cgroups(proc_cgroup)
    reasons = []
    v1 = mounts.get("memory")
    if v1 is not None:
        mount_point, mount_root = v1
        candidates = [mount_point]
        rel = _relative(own.get("memory"), mount_root)
        if rel:
            candidates.insert(0, mount_point / rel)
        for parent in candidates:
            try:
                return CgroupMemory(parent, v2=False)
            except OSError as exc:
                reasons.append(f"{parent}: {exc.strerror or exc}")
    v2 = mounts.get("")
    if v2 is not None:
        root = v2[0]
        try:
            if "memory" not in (root / "cgroup.controllers").read_text().split():
                raise OSError(errno.ENOTSUP, "memory controller not available in cgroup v2")
            if "memory" not in (root / "cgroup.subtree_control").read_text().split():
                _write(root / "cgroup.subtree_control", "+memory")
            return CgroupMemory(root, v2=True)
        except OSError as exc:
            reasons.append(f"{root}: {exc.strerror or exc}")
    return RlimitMemory("; ".join(reasons) or "no cgroup hierarchy with a memory controller is mounted")


def _cgroup_mounts(mountinfo: Path) -> dict[str, tuple[Path, str]]:
    """controller → (mount point, root within the hierarchy); "" names the v2 hierarchy."""
    found: dict[str, tuple[Path, str]] = {}
    try:
        lines = mountinfo.read_text().splitlines()
    except OSError:
        return found
    for line in lines:
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 3:
            continue
        root, point = _unescape(fields[3]), Path(_unescape(fields[4]))
        if tail[0] == "cgroup2":
            found.setdefault("", (point, root))
        elif tail[0] == "cgroup":
            for opt in tail[2].split(","):
                if opt == "memory":
                    found.setdefault("memory", (point, root))
    return found


def _own_cgroups(proc_cgroup: Path) -> dict[str, str]:
    """controller → this process's cgroup path ("" for v2), from /proc/self/cgroup."""
    own: dict[str, str] = {}
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return own
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) == 3:
            for controller in parts[1].split(",") if parts[1] else [""]:
                own[controller] = parts[2]
    return own


def _relative(own: str | None, mount_root: str) -> str:
    """The node's cgroup as a path below the mount point ("" if it is the root or not below)."""
    if not own:
        return ""
    root = mount_root.rstrip("/")
    if root and not (own == root or own.startswith(root + "/")):
        return ""
    return own[len(root):].strip("/")


def _unescape(field: str) -> str:
    return field.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def _write(path: Path, value: str) -> None:
    with open(path, "w") as fh:
        fh.write(value)


def _members(path: Path) -> list[int]:
    try:
        return [int(p) for p in (path / "cgroup.procs").read_text().split()]
    except (OSError, ValueError):
        return []


def _kill_members(path: Path, v2: bool) -> None:
    if v2 and (path / "cgroup.kill").exists():
        try:
            _write(path / "cgroup.kill", "1")
        except OSError:
            pass
    for _ in range(100):
        pids = _members(path)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.01)


def _rmdir(path: Path) -> None:
    """rmdir a cgroup; its last processes may still be exiting (EBUSY) for a moment."""
    for _ in range(200):
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno not in (errno.EBUSY, errno.ENOTEMPTY):
                log.warning("could not remove cgroup %s: %s", path, exc)
                return
            time.sleep(0.01)
    log.warning("cgroup %s still busy; left behind", path)


def _reap_stale(parent: Path) -> None:
    """Remove the boxes of node processes that are gone (a node killed with -9)."""
    try:
        entries = list(parent.glob("slfaas-*"))
    except OSError:
        return
    for d in entries:
        pid, start, *_ = d.name.split("-")[1:] + ["", ""]
        if not pid.isdigit() or proc_start_ticks(int(pid)) == start:
            continue
        v2 = (d / "cgroup.controllers").exists()
        for child in d.iterdir():
            if child.is_dir():
                _kill_members(child, v2)
                _rmdir(child)
        _rmdir(d)
