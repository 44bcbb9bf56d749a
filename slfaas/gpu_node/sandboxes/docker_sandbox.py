"""A Docker sandbox: one running container, seen by the node as a process (its runtime's host
pid, its exit status, its output lines); and the socket that hands a container the backbone."""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from slfaas import runtime_contract as rc
from slfaas.gpu_node.sandboxes.base import LogSink, Sandbox
from slfaas.gpu_node.sandboxes.loglines import capped_lines
from slfaas.weights.image import HANDOUT_IMAGE, HANDOUT_VMM

log = logging.getLogger(__name__)

TAG_IMAGE, TAG_VMM = HANDOUT_IMAGE, HANDOUT_VMM


class BackboneHandout:
    """Hands read-only descriptors of the node's backbone to whoever connects on a socket that
    only one container has mounted; closed after the first hand-over (the runtime maps the
    backbone once at init). CPU: the sealed memfd image (message ``B``); CUDA: the arena's
    VMM descriptor and its tensor table (``V``), which the runtime maps read-only."""

    def __init__(self, path: Path, tag: bytes, node_fds: tuple[int, ...]):
        self.path = path
        self._tag = tag
        self._fds: list[int] = []
        self._closed = False
        self._lock = threading.Lock()   # a hand-over and the close of its descriptors exclude each other
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            # a memfd or table is reopened read-only; a VMM descriptor (not a file) is duplicated
            for k, fd in enumerate(node_fds):
                self._fds.append(os.dup(fd) if tag == TAG_VMM and k == 0 else
                                 os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC))
            self._sock.bind(str(path))
            os.chmod(path, 0o666)  # the container user connects; the directory keeps host users out
            self._sock.listen(4)
        except BaseException:
            self.close()
            raise
        threading.Thread(target=self._serve, daemon=True, name=f"backbone-handout-{path.stem}").start()

    @staticmethod
    def descriptors(env: Mapping[str, str]) -> tuple[bytes, tuple[int, ...]] | None:
        """What a runtime with environment ``env`` borrows as descriptors, or None."""
        if env.get(rc.ENV_BACKBONE_VMM_FD) and env.get(rc.ENV_BACKBONE_TABLE_FD):
            return TAG_VMM, (int(env[rc.ENV_BACKBONE_VMM_FD]), int(env[rc.ENV_BACKBONE_TABLE_FD]))
        if env.get(rc.ENV_BACKBONE_FD):
            return TAG_IMAGE, (int(env[rc.ENV_BACKBONE_FD]),)
        return None

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            with conn, self._lock:
                if self._closed:   # closed meanwhile: its descriptor numbers may be another file's now
                    return
                try:
                    socket.send_fds(conn, [self._tag], self._fds)
                except OSError:
                    continue
            self.close()
            return

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._sock.shutdown(socket.SHUT_RDWR)  # wakes a blocked accept()
            except OSError:
                pass
            self._sock.close()
            self.path.unlink(missing_ok=True)
            for fd in self._fds:
                try:
                    os.close(fd)
                except OSError:
                    pass
            self._fds = []


class DockerSandbox(Sandbox):
    def __init__(self, container: Any, pid: int | None, log_sink: LogSink, memory_mb: int,
                 on_end: Callable[["DockerSandbox"], None], closers: tuple[Callable[[], None], ...] = ()):
        self.container = container
        self._pid = pid
        self._sink = log_sink
        self.memory_mb = memory_mb
        self._on_end = on_end
        self._closers = closers
        self._lock = threading.Lock()
        self._code: int | None = None
        self._pump = threading.Thread(target=self._pump_logs, daemon=True, name=f"sandbox-log-{container.name}")
        self._pump.start()

    def _pump_logs(self) -> None:
        for raw in capped_lines(self._log_chunks()):
            self._emit(raw)

    def _log_chunks(self) -> Iterator[bytes]:
        try:
            yield from self.container.logs(stream=True, follow=True, stdout=True, stderr=True)
        except Exception:  # the container was removed under us: nothing more to read
            log.debug("log stream of %s ended", self.container.name, exc_info=True)

    def set_sink(self, log_sink: LogSink) -> None:
        """Where output goes from now on (a warm-pool container gets its function's log)."""
        self._sink = log_sink

    def _emit(self, raw: bytes) -> None:
        try:
            self._sink(raw.decode("utf-8", "replace").rstrip("\r"))
        except Exception:  # a log write must never kill the pump
            log.exception("log sink failed")

    @property
    def pid(self) -> int | None:
        return self._pid

    def wait(self, timeout_s: float | None = None) -> int | None:
        if self._code is not None:
            return self._code
        import docker.errors
        import requests.exceptions

        lost_s = 0.0
        while True:
            try:
                status = self.container.wait(timeout=timeout_s)
                code: int | None = int(status.get("StatusCode", -1))
                break
            except requests.exceptions.ReadTimeout:
                return None  # still running
            except requests.exceptions.ConnectionError:
                if timeout_s is not None:
                    return None
                if lost_s > 60:  # the engine is gone: the container (if any) is beyond our reach
                    log.error("lost the Docker engine while waiting for %s", self.container.name)
                    code = None
                    break
                time.sleep(2)  # the engine restarting: wait for it to answer again
                lost_s += 2
            except docker.errors.NotFound:
                code = None  # removed by someone else (e.g. `docker rm -f`): treat as killed
                break
        return self._finish(code)

    def _finish(self, code: int | None) -> int:
        """Turn the container's end into a process-style status (negative: signal), once."""
        import docker.errors

        with self._lock:
            if self._code is not None:
                return self._code
            oom = False
            try:
                self.container.reload()
                oom = bool(self.container.attrs["State"].get("OOMKilled"))
            except docker.errors.APIError:
                pass
            self._pump.join(timeout=2)  # the last lines (e.g. a traceback) before the verdict
            if oom:
                self._emit(f"container exceeded its memory limit of {self.memory_mb} MB and was "
                           f"OOM-killed".encode())
                code = -9
            elif code is None:
                code = -9
            elif 128 < code < 128 + 65:  # docker-init (PID 1) reports a signal death as 128 + signo
                code = -(code - 128)
            self._code = code
        self._cleanup()
        return code

    def _cleanup(self) -> None:
        import docker.errors

        for close in self._closers:
            try:
                close()
            except Exception:
                log.exception("sandbox cleanup failed")
        try:
            self.container.remove(force=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:  # "removal already in progress"
            log.debug("removing %s: %s", self.container.name, exc)
        self._on_end(self)

    def kill(self) -> None:
        import docker.errors

        if self._code is not None:
            return
        try:
            self.container.kill()
        except docker.errors.APIError:  # not running any more, or gone
            pass

    def stop(self, grace_s: float = 2.0) -> None:
        import docker.errors

        if self._code is None:
            try:
                self.container.stop(timeout=max(1, int(round(grace_s))))
            except docker.errors.APIError:
                pass
        if self.wait(grace_s + 10) is None:
            self.kill()
            self.wait(10)




def runtime_pid(container: Any, timeout_s: float = 5.0) -> int | None:
    """The host pid of the runtime: the child of the container's init (docker-init)."""
    container.reload()
    init_pid = int(container.attrs["State"].get("Pid") or 0)
    if not init_pid:
        return None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{init_pid}/task/{init_pid}/children") as fh:
                children = fh.read().split()
        except OSError:
            return init_pid  # init already gone (the runtime died at once): the exit tells the rest
        if children:
            return int(children[0])
        time.sleep(0.005)
    return init_pid
