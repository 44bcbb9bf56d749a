"""One unprivileged uid per live sandbox, unique on the machine (every node on it included).

A uid is claimed with an exclusive ``flock`` on its own file in a root-only directory: the
kernel drops the claim when the node dies, however it dies. A uid is skipped while any
process still runs as it (so a uid is never shared, not even with the last processes of a
node that was killed), and so are the uids that ``/etc/passwd`` names or that
``/etc/subuid``/``/etc/subgid`` give to other users' containers. The processes of a sandbox
all run as its uid, which makes the uid itself a handle on them: ``sweep`` kills every one
(``kill(-1)`` sent as that uid reaches exactly its processes) before the uid is released.
"""
from __future__ import annotations

import fcntl
import logging
import os
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from slfaas.errors import NodeError

log = logging.getLogger(__name__)

FIRST_UID = 200_000
UID_COUNT = 65_536


class NoFreeUid(NodeError):
    """Every uid of the range is held by a live sandbox."""


class UidAllocator:
    def __init__(self, first: int = FIRST_UID, count: int = UID_COUNT, lock_dir: Path | None = None):
        self.first = first
        self.count = count
        self.lock_dir = lock_dir or _default_lock_dir()
        _private_dir(self.lock_dir)
        self._reserved = _reserved_ids(first, first + count)
        self._held: dict[int, int] = {}   # uid -> the descriptor that holds its lock
        self._lock = threading.Lock()
        self._next = first + (os.getpid() * 7919) % count   # nodes started together start apart

    def allocate(self) -> int:
        with self._lock:
            busy = _uids_running(self.first, self.first + self.count)
            for i in range(self.count):
                uid = self.first + (self._next - self.first + i) % self.count
                if uid in self._held or uid in busy or uid in self._reserved:
                    continue
                fd = os.open(self.lock_dir / str(uid), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    continue
                self._held[uid] = fd
                self._next = uid + 1   # a just-released uid is the last to be taken again
                return uid
        raise NoFreeUid(f"all {self.count} sandbox uids from {self.first} are in use")

    def release(self, uid: int) -> None:
        """Kill whatever still runs as ``uid``, then give it back (kept when that fails)."""
        if not sweep(uid):
            log.warning("processes of sandbox uid %d survived SIGKILL; the uid stays taken", uid)
            return
        with self._lock:
            fd = self._held.pop(uid, None)
        if fd is not None:
            os.close(fd)

    def held(self) -> set[int]:
        with self._lock:
            return set(self._held)


def sweep(uid: int, timeout_s: float = 5.0) -> bool:
    """SIGKILL every process running as ``uid``; True once none is left."""
    if not _uids_running(uid, uid + 1):
        return True
    # kill(-1) from a process with this uid signals exactly the processes of this uid (not itself)
    subprocess.run(["/bin/sh", "-c", "kill -9 -1 2>/dev/null; true"], user=uid, group=uid, extra_groups=[],
                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    deadline = time.monotonic() + timeout_s
    while _uids_running(uid, uid + 1):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def _uids_running(lo: int, hi: int) -> set[int]:
    """Real uids in [lo, hi) of the processes alive now (zombies excluded: they hold nothing)."""
    found: set[int] = set()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/status") as fh:
                state = uid = None
                for line in fh:
                    if line.startswith("State:"):
                        state = line.split()[1]
                    elif line.startswith("Uid:"):
                        uid = int(line.split()[1])
                        break
        except (OSError, ValueError, IndexError):
            continue
        if uid is not None and lo <= uid < hi and state != "Z":
            found.add(uid)
    return found


def _reserved_ids(lo: int, hi: int) -> set[int]:
    """Ids in [lo, hi) that belong to someone else: accounts, and other users' subordinate ids."""
    reserved: set[int] = set()
    for path in ("/etc/passwd", "/etc/group"):
        try:
            for line in Path(path).read_text().splitlines():
                parts = line.split(":")
                if len(parts) > 2 and parts[2].isdigit() and lo <= int(parts[2]) < hi:
                    reserved.add(int(parts[2]))
        except OSError:
            pass
    for path in ("/etc/subuid", "/etc/subgid"):
        try:
            for line in Path(path).read_text().splitlines():
                parts = line.split(":")
                if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
                    start, n = int(parts[1]), int(parts[2])
                    reserved.update(range(max(lo, start), min(hi, start + n)))
        except OSError:
            pass
    return reserved


def _default_lock_dir() -> Path:
    """/run/lock (not aged out like /tmp, where a cleaner could delete a held claim's file)."""
    run_lock = Path("/run/lock")
    base = run_lock if run_lock.is_dir() and os.access(run_lock, os.W_OK) else Path(tempfile.gettempdir())
    return base / "slfaas-uids"


def _private_dir(path: Path) -> None:
    """A root-owned 0700 directory that is really ours (no symlink planted by another user)."""
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        pass
    st = os.lstat(path)
    if not os.path.isdir(path) or os.path.islink(path) or st.st_uid != os.geteuid():
        raise NodeError(f"{path} is not a directory owned by this user: refusing to keep uid claims there")
    if st.st_mode & 0o077:
        os.chmod(path, 0o700)
