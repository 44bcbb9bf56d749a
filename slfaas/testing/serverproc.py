"""``slfaas server`` as a child process on a free port, for benchmarks and tests: started, its
URL read from its "listening on" line, its output kept, stopped with SIGTERM."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


class ServerProcess:
    def __init__(self, data_dir: Path, *extra: str, timeout_s: float = 120.0):
        self.data_dir = Path(data_dir)
        self.lines: list[str] = []
        self.url = ""
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "slfaas.cli.main", "server", "--port", "0", "--data-dir", str(data_dir), *extra],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError("server exited during start:\n" + "".join(self.lines))
            self.lines.append(line)
            m = re.search(r"listening on (http://\S+)", line)
            if m:
                self.url = m.group(1)
                break
        else:
            self.proc.kill()
            raise RuntimeError("server did not start in time:\n" + "".join(self.lines))
        threading.Thread(target=self._drain, daemon=True, name="server-output").start()

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def count(self, pattern: str) -> int:
        """Output lines so far that match ``pattern``."""
        return sum(1 for line in list(self.lines) if re.search(pattern, line))

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 120.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout_s)

    close = stop
