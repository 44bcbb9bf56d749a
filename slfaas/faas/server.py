"""The embedded default: control plane + one local node agent behind one HTTP server."""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from waitress.server import create_server

from slfaas.faas.api import create_app
from slfaas.faas.registry import Registry
from slfaas.faas.service import FunctionService
from slfaas.gpu_node.agent import NodeAgent, NodeConfig
from slfaas.gpu_node.sandboxes.base import SandboxFactory

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerConfig:
    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 9000
    database_url: str | None = None
    sandbox: str = "process"
    keep_alive_s: float = 300.0
    max_instances: int = 32
    init_timeout_s: float = 300.0
    device: str = "cpu"
    region: str = "us-east-1"
    threads: int = 32


def make_sandbox_factory(name: str) -> SandboxFactory:
    if name == "process":
        from slfaas.gpu_node.sandboxes.process import ProcessSandboxFactory
        return ProcessSandboxFactory()
    raise ValueError(f"unknown sandbox backend {name!r} (available: process)")


def resolve_device(device: str) -> str:
    if device == "cpu":
        return "cpu"
    if device == "auto":
        return "cpu"  # the CUDA node (shared GPU arena) is not built yet; CPU is the working path
    raise ValueError(f"device {device!r} is not supported yet: only 'cpu' (and 'auto', which picks cpu)")


class SlfaasServer:
    def __init__(self, config: ServerConfig):
        self.config = config
        data_dir = Path(config.data_dir).expanduser().resolve()
        data_dir.mkdir(parents=True, exist_ok=True)
        self.registry = Registry(config.database_url) if config.database_url else Registry.for_data_dir(data_dir)
        self.node = NodeAgent(
            NodeConfig(data_dir=data_dir, keep_alive_s=config.keep_alive_s, max_instances=config.max_instances,
                       init_timeout_s=config.init_timeout_s, device=resolve_device(config.device)),
            make_sandbox_factory(config.sandbox))
        self.service = FunctionService(self.registry, self.node, data_dir / "code", region=config.region,
                                       public_url=lambda: self.url)
        self.app = create_app(self.service)
        self._http = create_server(self.app, host=config.host, port=config.port, threads=config.threads,
                                   channel_timeout=3600, ident="slfaas")
        self._thread: threading.Thread | None = None
        self._closed = False

    @property
    def port(self) -> int:
        return int(self._http.effective_port)  # type: ignore[attr-defined]

    @property
    def url(self) -> str:
        host = self.config.host
        if host in ("0.0.0.0", "::"):
            host = "127.0.0.1"
        return f"http://{host}:{self.port}"

    def serve_forever(self) -> None:
        log.info("slfaas listening on %s (data dir %s)", self.url, self.config.data_dir)
        try:
            self._http.run()
        finally:
            self.close()

    def start_background(self) -> "SlfaasServer":
        self._thread = threading.Thread(target=self._http.run, daemon=True, name="slfaas-http")
        self._thread.start()
        return self

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        log.info("stopping: closing the API and every sandbox")
        try:
            self._http.close()
        except Exception:  # already closed by the run loop
            pass
        self.node.shutdown()
        self.registry.close()
        if self._thread is not None:
            self._thread.join(timeout=5)
