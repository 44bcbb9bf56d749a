"""The default sandbox: each instance is a separate OS process in its own session.

With ``isolation`` (the server's default) each instance runs under bubblewrap in its own
namespaces as its own uid, bounded by its MemorySize (``isolation``); without it
(``--insecure-sandbox``) it is a plain child process of the node, as the node's user.
The backbone descriptor is inherited (``pass_fds``); the runtime maps it read-only, so the
kernel, not convention, keeps a function from writing into the shared weights. A warm pool of
pre-started generic runtime processes (``process_pool``) is attached by the node's builder.
"""
from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

from slfaas.gpu_node.sandboxes.base import LogSink, Sandbox, SandboxFactory, SandboxSpec
from slfaas.gpu_node.sandboxes.loglines import capped_lines
from slfaas.gpu_node.sandboxes.pool_support import make_work_dir

if TYPE_CHECKING:
    from slfaas.gpu_node.sandboxes.isolation import HostIsolation, Jail

log = logging.getLogger(__name__)


class ProcessSandbox(Sandbox):
    """``jail``: the isolated sandbox's confinement (None: a plain process), released here
    once the sandbox has ended, by whichever of ``wait`` or the log pump sees the end first."""

    def __init__(self, proc: subprocess.Popen, log_sink: LogSink, jail: "Jail | None" = None):
        self._proc = proc
        self._sink = log_sink
        self.jail = jail
        self._runtime_pid: int | None = None if jail is not None else proc.pid
        self._ended = threading.Lock()
        self._code: int | None = None
        self._reader = threading.Thread(target=self._pump, daemon=True, name=f"sandbox-log-{proc.pid}")
        self._reader.start()

    def _pump(self) -> None:
        stdout = self._proc.stdout
        assert stdout is not None
        fd = stdout.fileno()   # read as it arrives, in bounded pieces: lines are capped, not buffered whole
        for raw in capped_lines(iter(lambda: os.read(fd, 1 << 16), b"")):
            self._emit(raw.decode("utf-8", "replace"))
        stdout.close()
        if self.jail is not None:
            self._end(self._proc.wait())

    def _emit(self, line: str) -> None:
        try:
            self._sink(line)
        except Exception:  # a log write must never kill the pump
            log.exception("log sink failed")

    def _end(self, code: int) -> int:
        """The sandbox's status, once: a jail is released and says how its sandbox ended."""
        with self._ended:
            if self._code is None:
                self._code = code
                if self.jail is not None:
                    from slfaas.gpu_node.sandboxes.isolation import exit_status

                    self._code = exit_status(code)
                    note = self.jail.exit_note()
                    if note:
                        self._emit(note)
                    self.jail.release()
            return self._code

    def set_sink(self, log_sink: LogSink) -> None:
        """Where output goes from now on (a warm-pool process gets its function's log)."""
        self._sink = log_sink

    @property
    def pid(self) -> int | None:
        """The runtime's pid (isolated: bwrap's grandchild, found once it exists)."""
        if self._runtime_pid is None and self._proc.poll() is None:
            from slfaas.gpu_node.sandboxes.isolation import descendant

            self._runtime_pid = descendant(self._proc.pid, 2)
        return self._runtime_pid

    def wait(self, timeout_s: float | None = None) -> int | None:
        try:
            code = self._proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            return None
        self._reader.join(timeout=2)  # drain the last lines (e.g. a traceback) before reporting
        return self._end(code)

    def _signal(self, sig: int) -> None:
        try:
            os.killpg(self._proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def kill(self) -> None:
        if self._proc.poll() is None:
            self._signal(signal.SIGKILL)

    def stop(self, grace_s: float = 2.0) -> None:
        if self._proc.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self._proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self._proc.wait()
        else:
            self._signal(signal.SIGKILL)  # stragglers in the session


class ProcessSandboxFactory(SandboxFactory):
    name = "process"

    def __init__(self, isolation: "HostIsolation | None" = None) -> None:
        self.isolation = isolation
        # Runtimes ask for PR_SET_PDEATHSIG, which fires when the *thread* that forked them
        # exits. Forking from one long-lived thread ties them to the node's life, not to the
        # life of whichever request thread happened to cause the cold start (or to the pool's).
        self._spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sandbox-spawner")
        self._work_dir: Path | None = None

    def start(self, spec: SandboxSpec, log_sink: LogSink) -> Sandbox:
        pooled = self.take_pooled(spec, log_sink)
        if pooled is not None:
            return pooled
        if self.isolation is None:
            return self.spawn(spec.argv, spec.env, spec.code_dir, spec.inherit_fds, log_sink)
        jail = self.isolation.jail(spec.instance_id, spec.memory_mb)
        try:
            argv, env = jail.instance(spec.argv, spec.env, spec.code_dir, spec.runtime_socket)
            return self.spawn(argv, env, Path("/"), spec.inherit_fds, log_sink, jail)
        except BaseException:
            jail.release()
            raise

    def spawn(self, argv: Sequence[str], env: Mapping[str, str], cwd: Path, inherit_fds: tuple[int, ...],
              log_sink: LogSink, jail: "Jail | None" = None) -> ProcessSandbox:
        """Start one runtime process (an instance, or a generic one for the warm pool); ``jail``:
        the confinement ``argv`` was built for, released when the sandbox ends."""
        return self._spawner.submit(self._spawn, argv, env, cwd, inherit_fds, log_sink, jail).result()

    @property
    def work_dir(self) -> Path:
        """Node-private directory (mode 0700) for the warm pool's sockets, made on first use."""
        if self._work_dir is None:
            self._work_dir = make_work_dir("slfaas-pp-")
        return self._work_dir

    def close(self) -> None:
        if self.pool is not None:
            for sandbox in self.pool.close():  # they exit at EOF on their pool socket; make sure
                assert isinstance(sandbox, Sandbox)
                sandbox.stop(grace_s=1.0)
                sandbox.wait(5)
            self.pool = None
        if self._work_dir is not None:
            shutil.rmtree(self._work_dir, ignore_errors=True)
        if self.isolation is not None:
            self.isolation.close()
        self._spawner.shutdown(wait=False)

    @staticmethod
    def _spawn(argv: Sequence[str], env: Mapping[str, str], cwd: Path, inherit_fds: tuple[int, ...],
               log_sink: LogSink, jail: "Jail | None") -> ProcessSandbox:
        proc = subprocess.Popen(
            list(argv),
            env=dict(env),
            cwd=str(cwd),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            pass_fds=inherit_fds,
            start_new_session=True,  # Ctrl-C on the server's terminal is the node's to handle
            close_fds=True,
        )
        return ProcessSandbox(proc, log_sink, jail)
