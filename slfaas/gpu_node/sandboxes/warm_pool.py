"""Warm pool of generic runtimes, whatever sandbox holds them (a container, a process).

A cold start's largest share is the runtime's imports (seconds); a pool runtime has paid it
before any function asked (``slfaas.functions.prewarm``). Specialising one costs what is
function-specific: the backbone attach, the adapter load and one warm-up forward.

This module is the backend-neutral half: slots (one per generic runtime, each with its own
Unix "pool socket"), the fill loop with back-off, the wait for "ready", taking a ready slot
and sending it the one specialisation message (the function's environment plus SCM_RIGHTS
descriptors: the backbone, and, where the sandbox cannot see the function's files, those
files), discarding a runtime that died, and closing. What differs per backend (how a generic
runtime is started, what must happen to its sandbox around the message) is a ``PoolLauncher``.

The backbone travels as the memfd's descriptor (CPU) or, for a backend whose runtime sees the
node's filesystem (``supports_cuda``: processes), as the path of the CUDA arena's IPC file in
the environment; the pool runtime has not initialised CUDA before it is specialised. A plain
cold start is used when the launcher's ``plan`` refuses a spec. The pool's size can change
while it runs (``resize``): the node's builder makes it, and the preloader sizes it.
"""
from __future__ import annotations

import json
import logging
import os
import select
import shutil
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from slfaas.gpu_node.sandboxes.base import LogSink, SandboxSpec
from slfaas.gpu_node.sandboxes.pool_support import Flavour, Handover, PoolLauncher, PoolSandbox, Prewarm
from slfaas.runtime_contract import (ENV_ADAPTER_FD, ENV_BACKBONE_FD, ENV_BACKBONE_IPC, ENV_BACKBONE_VMM_FD,
                                     ENV_BASE_MODEL_DIR, ENV_DEVICE, HANDOVER_FD_ENV, MAX_FDS, SPEC_HEADER)

log = logging.getLogger(__name__)

_READY_TIMEOUT_S = 600.0
REFILL_QUIET_S = 5.0
REFILL_MAX_DEFER_S = 10.0


def refill_deferred(now: float, last_take: float, defer_since: float | None, quiet_s: float,
                    max_defer_s: float) -> bool:
    """Whether replacements still wait: the last take is less than ``quiet_s`` old and the first
    take not replaced yet (``defer_since``; None: nothing to replace) less than ``max_defer_s``."""
    return defer_since is not None and now - last_take < quiet_s and now - defer_since < max_defer_s


@dataclass
class _Slot:
    sid: str
    dir: Path
    listener: socket.socket
    sandbox: PoolSandbox | None = None
    conn: socket.socket | None = None
    ready: threading.Event = field(default_factory=threading.Event)
    tail: list[str] = field(default_factory=list)  # its last output lines until specialised
    claimed: bool = False    # a cold start is waiting for (or took) this slot
    failed: bool = False
    released: bool = False   # let go on purpose (the pool shrank), not a failure to start

    def close_sockets(self) -> None:
        for s in (self.conn, self.listener):
            if s is not None:
                try:
                    s.shutdown(socket.SHUT_RDWR)  # wakes a blocked accept()/recv()
                except OSError:
                    pass
                s.close()
        (self.dir / "pool.sock").unlink(missing_ok=True)


class WarmPool:
    def __init__(self, launcher: PoolLauncher, size: int, flavour: Flavour | None = None,
                 prewarm: Callable[[], Prewarm] | None = None):
        """``flavour`` and ``prewarm``: a pool of pre-warmed runtimes for that backbone, each
        started with what ``prewarm()`` returns; without: generic runtimes (imports only)."""
        self.launcher = launcher
        self.size = size
        self.flavour = flavour
        self._prewarm = prewarm
        self._kind = launcher.kind if flavour is None else f"{launcher.kind} (pre-warmed for {flavour.base_model.name})"
        self._lock = threading.Lock()
        self._slots: list[_Slot] = []       # starting or ready, oldest first
        self._wake = threading.Event()
        self._closed = threading.Event()
        self._failures = 0                   # in a row: back off instead of re-importing in a loop
        self._starting = 0                   # launches under way that are not slots yet
        self._last_take = 0.0                # monotonic time of the last runtime taken
        # Starting a runtime competes with cold starts for the GPU and the driver (context,
        # mappings, warm-up; on the H200 8 replacements took 53 s beside served requests, 16 took
        # 42 s on an idle node): replacements wait until takes have been quiet for this long, also
        # when a burst emptied the pool, but no longer than ``refill_max_defer_s`` after the first
        # take not replaced yet, so that a steady stream of cold starts cannot keep it empty.
        self.refill_quiet_s = REFILL_QUIET_S
        self.refill_max_defer_s = REFILL_MAX_DEFER_S
        self._defer_since: float | None = None   # monotonic time of the first take not replaced yet
        # Starting a runtime is seconds of CPU (imports, a pre-warmed one's warm-up): a few at a
        # time where there are cores for it, one at a time on a small machine.
        self._starter = ThreadPoolExecutor(max_workers=max(1, (os.cpu_count() or 2) // 4),
                                           thread_name_prefix=f"warm-pool-start-{launcher.kind}")
        self._filler = threading.Thread(target=self._fill_loop, daemon=True, name=f"warm-pool-{self._kind}")
        self._filler.start()

    # filling
    def _fill_loop(self) -> None:
        while not self._closed.is_set():
            if self._failures:
                self._closed.wait(min(600.0, 5.0 * 2 ** (self._failures - 1)))
            with self._lock:
                missing = self.size - len(self._slots) - self._starting
                now = time.monotonic()
                busy = refill_deferred(now, self._last_take, self._defer_since, self.refill_quiet_s,
                                       self.refill_max_defer_s)
                if busy:
                    missing = 0
                else:
                    self._defer_since = None   # replaced now (or nothing is missing)
                self._starting += max(0, missing)
            try:
                for _ in range(max(0, missing)):
                    self._starter.submit(self._start_one)
            except RuntimeError:   # close() shut the starter down since the check above
                return
            self._wake.wait(0.5 if busy else 1.0)
            self._wake.clear()

    def _start_one(self) -> None:
        try:
            self._launch()
        except Exception:
            with self._lock:
                self._starting -= 1
            if not self._closed.is_set():
                log.exception("starting a warm-pool %s failed", self._kind)
                self._failures += 1
            self._wake.set()

    def _launch(self) -> None:
        sid = uuid.uuid4().hex[:8]
        slot_dir = self.launcher.work_dir / f"pool-{sid}"
        slot_dir.mkdir(mode=0o755)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(slot_dir / "pool.sock"))
        os.chmod(slot_dir / "pool.sock", 0o666)  # a container's user connects; the directory keeps others out
        listener.listen(1)
        slot = _Slot(sid, slot_dir, listener)
        prewarm = self._prewarm() if self._prewarm is not None else None
        try:
            slot.sandbox = self.launcher.launch(sid, slot_dir, self._pool_log(slot.tail, sid),
                                                (slot.close_sockets, lambda: _rmtree(slot_dir)), prewarm)
        except BaseException:
            slot.close_sockets()
            _rmtree(slot_dir)
            raise
        finally:
            for fd in prewarm.owned_fds if prewarm is not None else ():
                os.close(fd)   # the runtime holds its own copies
        with self._lock:
            self._starting -= 1
            # closed: close() took its snapshot already; or the pool shrank while it started
            unwanted = self._closed.is_set() or len(self._slots) >= self.size
            if not unwanted:
                self._slots.append(slot)
        if unwanted:
            self._discard(slot)
            return
        threading.Thread(target=self._watch, args=(slot,), daemon=True, name=f"pool-watch-{sid}").start()
        self._await_ready(slot)

    def _watch(self, slot: _Slot) -> None:
        """A pool runtime that ends before it is taken (a crash at import) leaves the pool."""
        assert slot.sandbox is not None
        code = slot.sandbox.wait()
        with self._lock:
            waiting = slot in self._slots
        if waiting:
            log.warning("warm-pool %s %s exited before use (status %s)", self._kind, slot.sid, code)
            self._discard(slot)

    @staticmethod
    def _pool_log(slot_tail: list[str], sid: str) -> LogSink:
        def sink(line: str) -> None:
            log.debug("pool %s: %s", sid, line)
            slot_tail.append(line)
            del slot_tail[:-20]
        return sink

    def _await_ready(self, slot: _Slot) -> None:
        """Block (the filler thread) until the generic runtime has imported everything."""
        slot.listener.settimeout(_READY_TIMEOUT_S)
        try:
            conn, _ = slot.listener.accept()
            conn.settimeout(_READY_TIMEOUT_S)
            line = conn.makefile("rb").readline()
            conn.settimeout(None)
            info = json.loads(line)
        except (OSError, ValueError) as exc:
            # a slot released on purpose while it started (the pool shrank) is no failure: its
            # listener was closed under this accept, and backing off would only slow the refill
            if not self._closed.is_set() and not slot.released:
                log.warning("warm-pool %s %s never became ready (%s)", self._kind, slot.sid, exc)
                self._failures += 1
            self._discard(slot)
            return
        slot.conn = conn
        self._failures = 0
        slot.ready.set()
        extra = (f", device init {info.get('device_init_s', 0.0):.2f} s, backbone attach "
                 f"{info.get('backbone_attach_s', 0.0):.2f} s, warm-up {info.get('warmup_s', 0.0):.2f} s"
                 if info.get("prewarmed") else "")
        if "paused_s" in info:   # it read the node's device-activity page
            extra += f", paused for served requests {info['paused_s']:.2f} s"
        log.info("warm-pool %s %s ready (imports %.2f s%s)", self._kind, slot.sid, info.get("imports_s", 0.0), extra)

    def _discard(self, slot: _Slot) -> None:
        slot.failed = True
        slot.ready.set()  # wakes a cold start waiting for this slot: it goes the cold path
        with self._lock:
            if slot in self._slots:
                self._slots.remove(slot)
        slot.close_sockets()
        if slot.sandbox is not None:
            slot.sandbox.kill()
            slot.sandbox.wait(10)
        _rmtree(slot.dir)
        if slot.tail and not self._closed.is_set():
            log.warning("warm-pool %s %s output:\n  %s", self._kind, slot.sid, "\n  ".join(slot.tail))
        self._wake.set()

    # taking
    def _pop_ready(self) -> _Slot | None:
        """A ready slot; else claim one still importing and wait for it (it is always
        further along than a runtime started now); None when the pool is empty."""
        with self._lock:
            free = [s for s in self._slots if not s.claimed]
            slot = next((s for s in free if s.ready.is_set()), free[0] if free else None)
            if slot is None:
                return None
            slot.claimed = True
            self._last_take = time.monotonic()
            if self._defer_since is None:
                self._defer_since = self._last_take
        slot.ready.wait(_READY_TIMEOUT_S)
        with self._lock:
            if slot in self._slots:
                self._slots.remove(slot)
        self._wake.set()  # start its replacement
        if slot.failed or slot.conn is None or select.select([slot.conn], [], [], 0)[0]:
            self._discard(slot)  # never became ready, or EOF while waiting: it died
            return None
        return slot

    def serves(self, spec: SandboxSpec) -> bool:
        """A pre-warmed pool serves only instances of its own backbone and device."""
        if self.flavour is None:
            return True
        model = spec.env.get(ENV_BASE_MODEL_DIR, "")
        return (bool(model) and Path(model).resolve() == self.flavour.base_model
                and spec.env.get(ENV_DEVICE, "cpu") == self.flavour.device)

    def ready_count(self) -> int:
        with self._lock:
            return sum(1 for s in self._slots if s.ready.is_set() and not s.claimed and not s.failed)

    def held(self) -> int:
        """Runtimes starting or ready in the pool now."""
        with self._lock:
            return len(self._slots)

    def resize(self, size: int) -> None:
        """Keep ``size`` runtimes from now on: more are started one by one; beyond it, ready
        runtimes nobody claimed are released (newest first: the oldest are surely ready)."""
        if size < 0:
            raise ValueError(f"a warm pool's size must be 0 or more, got {size}")
        with self._lock:
            self.size = size
            spare = [s for s in self._slots if not s.claimed]
            drop = min(len(spare), max(0, len(self._slots) - size))
            extra = spare[len(spare) - drop:] if drop else []
            for slot in extra:
                slot.claimed = True
                slot.released = True
        for slot in reversed(extra):
            self._discard(slot)
        self._wake.set()

    def take(self, spec: SandboxSpec, log_sink: LogSink) -> PoolSandbox | None:
        """A ready pool runtime specialised into ``spec``'s instance, or None (cold path)."""
        if spec.env.get(ENV_DEVICE, "cpu") != "cpu":
            if not self.launcher.cuda:   # started without the GPU: cannot become a CUDA instance
                return None
            if not (spec.env.get(ENV_BACKBONE_VMM_FD) or (self.launcher.supports_cuda and spec.env.get(ENV_BACKBONE_IPC))):
                return None
        elif not spec.env.get(ENV_BACKBONE_FD):
            return None
        if self.flavour is not None and not self.serves(spec):
            return None
        handover = self.launcher.plan(spec)
        if handover is None or len(handover.task_files) + len(handover.model_files) + 2 > MAX_FDS:
            return None
        slot = self._pop_ready()
        if slot is None:
            return None
        assert slot.sandbox is not None
        try:
            env = self.launcher.prepare(slot.dir, slot.sandbox, spec)
            # output from here on is the instance's: switch before the runtime can print
            slot.sandbox.set_sink(log_sink)
            self._send(slot, spec, env, handover)
        except Exception:
            log.exception("specialising warm-pool %s %s failed; cold-starting instead", self._kind, slot.sid)
            self._discard(slot)
            return None
        slot.close_sockets()
        self.launcher.finish(slot.dir, slot.sandbox, spec)
        slot.sandbox.preloaded = True
        log.info("instance %s from warm-pool %s %s", spec.instance_id, self._kind, slot.sid)
        return slot.sandbox

    def _send(self, slot: _Slot, spec: SandboxSpec, env: dict[str, str], handover: Handover) -> None:
        """The one specialisation message (``slfaas.functions.prewarm`` reads it); a pre-warmed
        runtime has its backbone already, and may get its adapter's weights from a node tier."""
        assert slot.conn is not None
        names = HANDOVER_FD_ENV if self.flavour is None else (ENV_ADAPTER_FD,)
        fd_env = [name for name in names if spec.env.get(name)]
        body: dict = {"env": env, "fd_env": fd_env}
        if handover.link_files:
            body.update(task_files=list(handover.task_files), model_files=list(handover.model_files))
        raw = json.dumps(body).encode()
        fds: list[int] = []
        try:
            for name in fd_env:   # the backbone's (a CUDA IPC handle travels as a path instead), the adapter's
                node_fd = int(spec.env[name])
                # the sealed CPU image is reopened read-only; the GPU arena's descriptors are duplicated
                fds.append(os.open(f"/proc/self/fd/{node_fd}", os.O_RDONLY | os.O_CLOEXEC)
                           if name == ENV_BACKBONE_FD else os.dup(node_fd))
            fds += [os.open(handover.code_dir / n, os.O_RDONLY | os.O_CLOEXEC) for n in handover.task_files]
            fds += [os.open(handover.model_dir / n, os.O_RDONLY | os.O_CLOEXEC) for n in handover.model_files]
            message = SPEC_HEADER.pack(len(raw)) + raw
            sent = socket.send_fds(slot.conn, [message], fds)
            if sent < len(message):
                slot.conn.sendall(message[sent:])
        finally:
            for fd in fds:
                os.close(fd)

    def close(self) -> list[PoolSandbox]:
        """Stop filling and release every waiting runtime (it sees EOF and exits); returns their
        sandboxes for a backend that must also end them itself."""
        self._closed.set()
        self._wake.set()
        self._starter.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            slots, self._slots = list(self._slots), []
        for slot in slots:
            slot.failed = True
            slot.ready.set()
            slot.close_sockets()
        return [s.sandbox for s in slots if s.sandbox is not None]


def _rmtree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
