"""The Lambda Runtime API, served to ONE instance over its own Unix socket.

One socket per instance means an instance can only ever receive its own invocations, and
a container can reach its node with no network at all (the socket is mounted).
Paths follow AWS: ``GET /2018-06-01/runtime/invocation/next``, ``POST …/{id}/response``,
``POST …/{id}/error``, ``POST /2018-06-01/runtime/init/error``; plus one slfaas extension,
``POST /2018-06-01/runtime/slfaas/init-report`` (init phase timings, adapter bytes).
"""
from __future__ import annotations

import json
import logging
import os
import re
import socketserver
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Protocol

log = logging.getLogger(__name__)

API_PREFIX = "/2018-06-01/runtime"
_INVOCATION_PATH = re.compile(rf"^{API_PREFIX}/invocation/([^/]+)/(response|error)$")
MAX_RESPONSE_BYTES = 6 * 1024 * 1024 + 1024


@dataclass(frozen=True)
class Delivery:
    """What ``/next`` hands the runtime."""

    request_id: str
    payload: bytes
    deadline_ms: int
    function_arn: str
    client_context: str | None
    cold_start: bool
    queue_ms: float


class RuntimeEndpoint(Protocol):
    """The instance side of the API (implemented by ``Instance``)."""

    def next_delivery(self) -> Delivery | None: ...
    def complete(self, request_id: str, body: bytes, error_type: str | None) -> bool: ...
    def init_failed(self, body: bytes, error_type: str) -> None: ...
    def init_report(self, report: dict) -> None: ...


class _UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    block_on_close = False

    def handle_error(self, request: object, client_address: object) -> None:
        # An instance killed mid-request resets its connection: expected, not a node error.
        log.debug("runtime api connection error", exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "_UnixHTTPServer"

    def address_string(self) -> str:  # Unix sockets have no peer address
        return "runtime"

    def log_message(self, fmt: str, *args: object) -> None:
        log.debug("runtime api: " + fmt, *args)

    @property
    def endpoint(self) -> RuntimeEndpoint:
        return self.server.endpoint  # type: ignore[attr-defined]

    def _reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, error_type: str, message: str) -> None:
        body = json.dumps({"errorMessage": message, "errorType": error_type}).encode()
        self._reply(status, body, {"Content-Type": "application/json"})

    def _body(self) -> bytes | None:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_RESPONSE_BYTES:
            self._error(413, "RequestEntityTooLarge", "response payload too large")
            return None
        return self.rfile.read(length) if length else b""

    def do_GET(self) -> None:
        if self.path != f"{API_PREFIX}/invocation/next":
            self._error(404, "NotFound", self.path)
            return
        delivery = self.endpoint.next_delivery()
        if delivery is None:  # instance is being stopped
            self._error(410, "InstanceStopping", "this instance is shutting down")
            return
        headers = {
            "Content-Type": "application/json",
            "Lambda-Runtime-Aws-Request-Id": delivery.request_id,
            "Lambda-Runtime-Deadline-Ms": str(delivery.deadline_ms),
            "Lambda-Runtime-Invoked-Function-Arn": delivery.function_arn,
            "Lambda-Runtime-Trace-Id": f"Root=1-{delivery.request_id[:8]}",
            "Slfaas-Cold-Start": "1" if delivery.cold_start else "0",
            "Slfaas-Queue-Ms": f"{delivery.queue_ms:.3f}",
        }
        if delivery.client_context:
            headers["Lambda-Runtime-Client-Context"] = delivery.client_context
        self._reply(200, delivery.payload, headers)

    def do_POST(self) -> None:
        body = self._body()
        if body is None:
            return
        if self.path == f"{API_PREFIX}/slfaas/init-report":
            # slfaas extension: what init cost and what the instance holds (adapter bytes)
            try:
                report = json.loads(body)
            except ValueError:
                self._error(400, "InvalidReport", "init report must be JSON")
                return
            if not isinstance(report, dict):
                self._error(400, "InvalidReport", "init report must be a JSON object")
                return
            self.endpoint.init_report(report)
            self._reply(202, b'{"status":"OK"}')
            return
        if self.path == f"{API_PREFIX}/init/error":
            self.endpoint.init_failed(body, self.headers.get("Lambda-Runtime-Function-Error-Type")
                                      or "Runtime.InitError")
            self._reply(202, b'{"status":"OK"}')
            return
        m = _INVOCATION_PATH.match(self.path)
        if not m:
            self._error(404, "NotFound", self.path)
            return
        request_id, kind = m.groups()
        error_type = None
        if kind == "error":
            error_type = self.headers.get("Lambda-Runtime-Function-Error-Type") or "Runtime.Unknown"
        if self.endpoint.complete(request_id, body, error_type):
            self._reply(202, b'{"status":"OK"}')
        else:
            self._error(400, "InvalidRequestID", f"unknown or finished request {request_id}")


class RuntimeApiServer:
    def __init__(self, socket_path: Path, endpoint: RuntimeEndpoint):
        self.socket_path = Path(socket_path)
        if self.socket_path.exists():
            self.socket_path.unlink()
        self._server = _UnixHTTPServer(str(self.socket_path), _Handler)
        self._server.endpoint = endpoint  # type: ignore[attr-defined]
        os.chmod(self.socket_path, 0o660)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                        daemon=True, name=f"runtime-api-{self.socket_path.name}")

    def start(self) -> "RuntimeApiServer":
        self._thread.start()
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        try:
            self.socket_path.unlink()
        except FileNotFoundError:
            pass
