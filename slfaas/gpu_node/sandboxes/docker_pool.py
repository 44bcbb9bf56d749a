"""Warm pool of docker sandboxes: generic containers pre-started with the libraries imported,
each specialised on demand into one function's instance.

A cold start's largest share is the runtime's imports (seconds); a pool container has paid it
before any function asked (``slfaas.functions.prewarm``). Specialising one costs what is
function-specific: the backbone attach, the adapter load and one warm-up forward.

The container was created before the function was known, so nothing of the function is
mounted into it. Instead, per slot, a private directory is mounted at ``/run/slfaas`` and
- the instance's Runtime API socket is hard-linked into it (a Unix socket is found by its
  inode, so the link reaches the node's server; both live under the node's temp dir);
- the node sends, over the slot's socket (SCM_RIGHTS), a read-only descriptor of the
  backbone and descriptors of the function's own code files and of the base model's
  config/tokenizer files, which the runtime links under its private /tmp;
- the container's memory limit is updated to the function's MemorySize, and the container
  is renamed after the instance.
Limits of this path (a plain cold start is used instead): CPU backbones only, at most ~250
files, and a hard link between the temp dir's sockets must be possible. Pool containers keep
the labels they were created with (Docker cannot relabel): node identity and ``slfaas.pool``,
not the function's; their name carries the instance id.
"""
from __future__ import annotations

import json
import logging
import os
import select
import socket
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slfaas.functions.prewarm import MAX_FDS, SPEC_HEADER
from slfaas.gpu_node.sandboxes.base import LogSink, SandboxSpec

if TYPE_CHECKING:
    from slfaas.gpu_node.sandboxes.docker import DockerSandbox, DockerSandboxFactory

log = logging.getLogger(__name__)

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".h5", ".msgpack", ".onnx")
_PASS_ENV_PREFIXES = ("OMP_", "MKL_", "TORCH_", "PYTORCH_")
_READY_TIMEOUT_S = 600.0


@dataclass
class _Slot:
    sid: str
    dir: Path
    listener: socket.socket
    sandbox: "DockerSandbox | None" = None
    conn: socket.socket | None = None
    ready: threading.Event = field(default_factory=threading.Event)
    tail: list[str] = field(default_factory=list)  # its last output lines until specialised
    claimed: bool = False    # a cold start is waiting for (or took) this slot
    failed: bool = False

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
    def __init__(self, factory: "DockerSandboxFactory", size: int):
        self.factory = factory
        self.size = size
        self._lock = threading.Lock()
        self._slots: list[_Slot] = []       # starting or ready, oldest first
        self._wake = threading.Event()
        self._closed = threading.Event()
        self._failures = 0                   # in a row: back off instead of re-importing in a loop
        self._filler = threading.Thread(target=self._fill_loop, daemon=True, name="docker-warm-pool")
        self._filler.start()

    # filling
    def _fill_loop(self) -> None:
        while not self._closed.is_set():
            with self._lock:
                missing = self.size - len(self._slots)
            if missing > 0:
                try:
                    self._launch()  # one at a time: each launch is seconds of CPU (imports)
                except Exception:
                    log.exception("starting a warm-pool container failed")
                    self._failures += 1
                if self._failures:
                    self._closed.wait(min(600.0, 5.0 * 2 ** (self._failures - 1)))
                continue
            self._wake.wait(1.0)
            self._wake.clear()

    def _launch(self) -> None:
        from docker.types import Mount

        from slfaas.gpu_node.sandboxes.docker import RUN_DIR, DockerSandbox

        sid = uuid.uuid4().hex[:8]
        slot_dir = self.factory.work_dir / f"pool-{sid}"
        slot_dir.mkdir(mode=0o755)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(slot_dir / "pool.sock"))
        os.chmod(slot_dir / "pool.sock", 0o666)
        listener.listen(1)
        slot = _Slot(sid, slot_dir, listener)
        env = {k: v for k, v in os.environ.items() if k.startswith(_PASS_ENV_PREFIXES)}
        env.update({"HOME": "/tmp", "TMPDIR": "/tmp", "USER": "slfaas", "PYTHONUNBUFFERED": "1",
                    "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                    "SLFAAS_POOL_SOCKET": f"{RUN_DIR}/pool.sock"})
        mounts = [Mount(RUN_DIR, str(slot_dir), type="bind", read_only=True)]
        argv = self.factory.python_argv(["-m", "slfaas.functions.prewarm"], env, mounts)
        try:
            container, pid = self.factory.run_container(
                f"slfaas-pool-{sid}", argv, env, mounts, {"slfaas.pool": "1"}, self.factory.config.pool_memory_mb)
        except BaseException:
            slot.close_sockets()
            _rmtree(slot_dir)
            raise
        slot.sandbox = DockerSandbox(container, pid, self._pool_log(slot.tail, sid), self.factory.config.pool_memory_mb,
                                     self.factory.forget, (slot.close_sockets, lambda: _rmtree(slot_dir)))
        self.factory.adopt(slot.sandbox)
        with self._lock:
            self._slots.append(slot)
        threading.Thread(target=self._watch, args=(slot,), daemon=True, name=f"pool-watch-{sid}").start()
        self._await_ready(slot)

    def _watch(self, slot: _Slot) -> None:
        """A pool container that ends before it is taken (a crash at import) leaves the pool."""
        assert slot.sandbox is not None
        code = slot.sandbox.wait()
        with self._lock:
            waiting = slot in self._slots
        if waiting:
            log.warning("warm-pool container %s exited before use (status %s)", slot.sid, code)
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
            if not self._closed.is_set():
                log.warning("warm-pool container %s never became ready (%s)", slot.sid, exc)
                self._failures += 1
            self._discard(slot)
            return
        slot.conn = conn
        self._failures = 0
        slot.ready.set()
        log.info("warm-pool container %s ready (imports %.2f s)", slot.sid, info.get("imports_s", 0.0))

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
        if slot.tail and not self._closed.is_set():
            log.warning("warm-pool container %s output:\n  %s", slot.sid, "\n  ".join(slot.tail))
        self._wake.set()

    # taking
    def _pop_ready(self) -> _Slot | None:
        """A ready slot; else claim one still importing and wait for it (it is always
        further along than a container started now); None when the pool is empty."""
        with self._lock:
            free = [s for s in self._slots if not s.claimed]
            slot = next((s for s in free if s.ready.is_set()), free[0] if free else None)
            if slot is None:
                return None
            slot.claimed = True
        slot.ready.wait(_READY_TIMEOUT_S)
        with self._lock:
            if slot in self._slots:
                self._slots.remove(slot)
        self._wake.set()  # start its replacement
        if slot.failed or slot.conn is None or select.select([slot.conn], [], [], 0)[0]:
            self._discard(slot)  # never became ready, or EOF while waiting: it died
            return None
        return slot

    def held(self) -> int:
        """Containers starting or ready in the pool now."""
        with self._lock:
            return len(self._slots)

    def take(self, spec: SandboxSpec, log_sink: LogSink) -> "DockerSandbox | None":
        """A ready pool container specialised into ``spec``'s instance, or None (cold path)."""
        if spec.env.get("SLFAAS_DEVICE", "cpu") != "cpu" or not spec.env.get("SLFAAS_BACKBONE_FD"):
            return None
        task_files = _files(spec.code_dir)
        model_dir = Path(spec.env.get("SLFAAS_BASE_MODEL_DIR", ""))
        model_files = [n for n in _files(model_dir, recursive=False) if not n.endswith(_WEIGHT_SUFFIXES)]
        if len(task_files) + len(model_files) + 1 > MAX_FDS:
            return None
        slot = self._pop_ready()
        if slot is None:
            return None
        try:
            self._specialise(slot, spec, task_files, model_dir, model_files)
        except Exception:
            log.exception("specialising warm-pool container %s failed; cold-starting instead", slot.sid)
            self._discard(slot)
            return None
        assert slot.sandbox is not None
        slot.sandbox.memory_mb = spec.memory_mb
        slot.sandbox.preloaded = True
        slot.sandbox.set_sink(log_sink)
        log.info("instance %s from warm-pool container %s", spec.instance_id, slot.sid)
        return slot.sandbox

    def _specialise(self, slot: _Slot, spec: SandboxSpec, task_files: list[str], model_dir: Path,
                    model_files: list[str]) -> None:
        import docker.errors

        from slfaas.gpu_node.sandboxes.docker import RUN_DIR

        assert slot.sandbox is not None and slot.conn is not None
        container = slot.sandbox.container
        os.chmod(spec.runtime_socket, 0o666)
        os.link(spec.runtime_socket, slot.dir / "runtime.sock")  # EXDEV: different filesystems → cold path
        container.update(mem_limit=f"{spec.memory_mb}m", memswap_limit=f"{spec.memory_mb}m")
        env = self.factory.runtime_env(spec)
        env["SLFAAS_RUNTIME_SOCKET"] = f"{RUN_DIR}/runtime.sock"
        self.factory.python_argv([], env, [])  # the same PYTHONPATH/PATH as a cold-started container
        body = json.dumps({"env": env, "task_files": task_files, "model_files": model_files}).encode()
        fds: list[int] = []
        try:
            fds.append(os.open(f"/proc/self/fd/{int(spec.env['SLFAAS_BACKBONE_FD'])}", os.O_RDONLY | os.O_CLOEXEC))
            fds += [os.open(spec.code_dir / n, os.O_RDONLY | os.O_CLOEXEC) for n in task_files]
            fds += [os.open(model_dir / n, os.O_RDONLY | os.O_CLOEXEC) for n in model_files]
            message = SPEC_HEADER.pack(len(body)) + body
            sent = socket.send_fds(slot.conn, [message], fds)
            if sent < len(message):
                slot.conn.sendall(message[sent:])
        finally:
            for fd in fds:
                os.close(fd)
        slot.close_sockets()
        try:  # past the point of no return: the runtime is now this instance's
            container.rename(f"slfaas-{spec.instance_id}")
        except docker.errors.APIError as exc:
            log.debug("renaming %s: %s", container.name, exc)

    def close(self) -> None:
        self._closed.set()
        self._wake.set()
        with self._lock:
            slots, self._slots = list(self._slots), []
        for slot in slots:
            slot.failed = True
            slot.ready.set()
            slot.close_sockets()  # the runtime sees EOF and exits; the factory removes the container


def _files(root: Path, recursive: bool = True) -> list[str]:
    if not root.is_dir():
        return []
    paths = root.rglob("*") if recursive else root.iterdir()
    return sorted(str(p.relative_to(root)) for p in paths if p.is_file() and not p.is_symlink())


def _rmtree(path: Path) -> None:
    import shutil
    shutil.rmtree(path, ignore_errors=True)

