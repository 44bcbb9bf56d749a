"""The default sandbox: each instance is a separate OS process in its own session.

The backbone descriptor is inherited (``pass_fds``); the runtime maps it read-only, so the
kernel, not convention, keeps a function from writing into the shared weights. A warm pool of
pre-started generic runtime processes (``warm_pool`` > 0) is in ``process_pool``.
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
from typing import Mapping, Sequence

from slfaas.gpu_node.sandboxes.base import LogSink, Sandbox, SandboxFactory, SandboxSpec
from slfaas.gpu_node.sandboxes.loglines import capped_lines

log = logging.getLogger(__name__)


class ProcessSandbox(Sandbox):
    def __init__(self, proc: subprocess.Popen, log_sink: LogSink):
        self._proc = proc
        self._sink = log_sink
        self._reader = threading.Thread(target=self._pump, daemon=True, name=f"sandbox-log-{proc.pid}")
        self._reader.start()

    def _pump(self) -> None:
        stdout = self._proc.stdout
        assert stdout is not None
        fd = stdout.fileno()   # read as it arrives, in bounded pieces: lines are capped, not buffered whole
        for raw in capped_lines(iter(lambda: os.read(fd, 1 << 16), b"")):
            try:
                self._sink(raw.decode("utf-8", "replace"))
            except Exception:  # a log write must never kill the pump
                log.exception("log sink failed")
        stdout.close()

    def set_sink(self, log_sink: LogSink) -> None:
        """Where output goes from now on (a warm-pool process gets its function's log)."""
        self._sink = log_sink

    @property
    def pid(self) -> int | None:
        return self._proc.pid

    def wait(self, timeout_s: float | None = None) -> int | None:
        try:
            code = self._proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            return None
        self._reader.join(timeout=2)  # drain the last lines (e.g. a traceback) before reporting
        return code

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

    def __init__(self, warm_pool: int = 0) -> None:
        # Runtimes ask for PR_SET_PDEATHSIG, which fires when the *thread* that forked them
        # exits. Forking from one long-lived thread ties them to the node's life, not to the
        # life of whichever request thread happened to cause the cold start (or to the pool's).
        self._spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sandbox-spawner")
        self._pool = None
        self._work_dir: Path | None = None
        if warm_pool > 0:
            from slfaas.gpu_node.sandboxes.process_pool import process_warm_pool
            from slfaas.gpu_node.sandboxes.warm_pool import make_work_dir

            self._work_dir = make_work_dir("slfaas-pp-")
            self._pool = process_warm_pool(self, warm_pool)

    def start(self, spec: SandboxSpec, log_sink: LogSink) -> Sandbox:
        if self._pool is not None:
            pooled = self._pool.take(spec, log_sink)
            if pooled is not None:
                assert isinstance(pooled, ProcessSandbox)
                return pooled
        return self.spawn(spec.argv, spec.env, spec.code_dir, spec.inherit_fds, log_sink)

    def spawn(self, argv: Sequence[str], env: Mapping[str, str], cwd: Path, inherit_fds: tuple[int, ...],
              log_sink: LogSink) -> ProcessSandbox:
        """Start one runtime process (an instance, or a generic one for the warm pool)."""
        return self._spawner.submit(self._spawn, argv, env, cwd, inherit_fds, log_sink).result()

    def warm_count(self) -> int:
        return self._pool.held() if self._pool is not None else 0

    @property
    def work_dir(self) -> Path:
        """Node-private directory (mode 0700) for the warm pool's sockets."""
        assert self._work_dir is not None
        return self._work_dir

    def close(self) -> None:
        if self._pool is not None:
            for sandbox in self._pool.close():  # they exit at EOF on their pool socket; make sure
                sandbox.stop(grace_s=1.0)
                sandbox.wait(5)
            self._pool = None
        if self._work_dir is not None:
            shutil.rmtree(self._work_dir, ignore_errors=True)
        self._spawner.shutdown(wait=False)

    @staticmethod
    def _spawn(argv: Sequence[str], env: Mapping[str, str], cwd: Path, inherit_fds: tuple[int, ...],
               log_sink: LogSink) -> ProcessSandbox:
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
        return ProcessSandbox(proc, log_sink)
