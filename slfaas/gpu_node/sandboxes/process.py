"""The default sandbox: each instance is a separate OS process in its own session.

The backbone descriptor is inherited (``pass_fds``); the runtime maps it read-only, so the
kernel, not convention, keeps a function from writing into the shared weights.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor

from slfaas.gpu_node.sandboxes.base import LogSink, Sandbox, SandboxFactory, SandboxSpec

log = logging.getLogger(__name__)


class ProcessSandbox(Sandbox):
    def __init__(self, proc: subprocess.Popen, log_sink: LogSink):
        self._proc = proc
        self._reader = threading.Thread(target=self._pump, args=(log_sink,), daemon=True,
                                        name=f"sandbox-log-{proc.pid}")
        self._reader.start()

    def _pump(self, log_sink: LogSink) -> None:
        assert self._proc.stdout is not None
        for raw in iter(self._proc.stdout.readline, b""):
            try:
                log_sink(raw.decode("utf-8", "replace").rstrip("\n"))
            except Exception:  # a log write must never kill the pump
                log.exception("log sink failed")
        self._proc.stdout.close()

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

    def __init__(self) -> None:
        # Runtimes ask for PR_SET_PDEATHSIG, which fires when the *thread* that forked them
        # exits. Forking from one long-lived thread ties them to the node's life, not to the
        # life of whichever request thread happened to cause the cold start.
        self._spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sandbox-spawner")

    def start(self, spec: SandboxSpec, log_sink: LogSink) -> Sandbox:
        return self._spawner.submit(self._spawn, spec, log_sink).result()

    def close(self) -> None:
        self._spawner.shutdown(wait=False)

    @staticmethod
    def _spawn(spec: SandboxSpec, log_sink: LogSink) -> Sandbox:
        proc = subprocess.Popen(
            list(spec.argv),
            env=dict(spec.env),
            cwd=str(spec.code_dir),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            pass_fds=spec.inherit_fds,
            start_new_session=True,  # Ctrl-C on the server's terminal is the node's to handle
            close_fds=True,
        )
        return ProcessSandbox(proc, log_sink)
