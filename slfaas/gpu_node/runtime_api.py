"""The Lambda Runtime API, served to ONE instance over its own Unix socket.

One socket per instance means an instance can only ever receive its own invocations, and
a container can reach its node with no network at all (the socket is mounted).
Paths follow AWS: ``GET /2018-06-01/runtime/invocation/next``, ``POST …/{id}/response``,
``POST …/{id}/error``, ``POST /2018-06-01/runtime/init/error``; plus one slfaas extension,
``POST /2018-06-01/runtime/slfaas/init-report`` (init phase timings, adapter bytes).

Streaming responses follow Lambda's contract: ``POST …/{id}/response`` with
``Lambda-Runtime-Function-Response-Mode: streaming`` and a chunked body; each chunk is handed
on (to the HTTP client reading the invocation) as it arrives, and a failure after the stream
began comes in the trailers ``Lambda-Runtime-Function-Error-Type`` / ``…-Error-Body`` (base64).
The node asks for a stream on ``/next`` with ``Slfaas-Response-Mode: streaming``.
"""
from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import re
import socketserver
import threading
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Iterator, Protocol

from slfaas.runtime_contract import (API_PREFIX, H_ADAPTER_CONFIG, H_DEVICE_MS, H_ERROR_BODY, H_ERROR_TYPE,
                                     H_FUNCTION_RESPONSE_MODE, H_RESULT_METRICS, MAX_RESPONSE_BYTES,
                                     MAX_STREAMED_RESPONSE_BYTES, PATH_ADAPTER, PATH_INIT_ERROR, PATH_INIT_REPORT,
                                     PATH_NEXT, RESULT_METRIC_KEYS, STREAMING, Delivery)

log = logging.getLogger(__name__)

_INVOCATION_PATH = re.compile(rf"^{API_PREFIX}/invocation/([^/]+)/(response|error)$")
_MAX_LINE = 65536


def result_metrics(raw: str | None) -> dict | None:
    """The runtime's JSON account of an invocation (``H_RESULT_METRICS``): the contract's keys
    with plain values only (the runtime is the function's code: nothing else is kept)."""
    try:
        parsed = json.loads(raw) if raw else None
    except (ValueError, RecursionError):
        return None
    if not isinstance(parsed, dict):
        return None
    return {k: v for k, v in parsed.items()
            if k in RESULT_METRIC_KEYS and isinstance(v, (int, float, str)) and not isinstance(v, bool)
            and (not isinstance(v, str) or len(v) <= 64)}


class RuntimeEndpoint(Protocol):
    """The instance side of the API (implemented by ``Instance``)."""

    def next_delivery(self) -> Delivery | None: ...
    def complete(self, request_id: str, body: bytes, error_type: str | None, *, streamed: bool = False,
                 metrics: dict | None = None) -> bool: ...
    def stream_chunk(self, request_id: str, data: bytes) -> bool: ...
    def init_failed(self, body: bytes, error_type: str) -> None: ...
    def init_report(self, report: dict) -> None: ...
    def delivery_failed(self, request_id: str) -> None: ...
    def adapter_dir(self, adapter_id: str) -> Path | None: ...


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

    def _read_chunks(self) -> Iterator[bytes]:
        """The chunks of a ``Transfer-Encoding: chunked`` body, each as soon as it is complete."""
        while True:
            line = self.rfile.readline(_MAX_LINE)
            if not line.endswith(b"\n"):
                raise ConnectionError("chunked body cut short")
            size = int(line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                return
            if size > MAX_STREAMED_RESPONSE_BYTES:
                raise ValueError("chunk too large")
            data = self.rfile.read(size)
            if len(data) < size or self.rfile.read(2) != b"\r\n":
                raise ConnectionError("chunked body cut short")
            yield data

    def _read_trailers(self) -> dict[str, str]:
        trailers: dict[str, str] = {}
        while True:
            line = self.rfile.readline(_MAX_LINE)
            if not line:
                raise ConnectionError("chunked body cut short")
            if line in (b"\r\n", b"\n"):
                return trailers
            name, _, value = line.decode("latin-1").partition(":")
            trailers[name.strip().lower()] = value.strip()

    def _chunked(self) -> bool:
        return "chunked" in self.headers.get("Transfer-Encoding", "").lower()

    def _body(self) -> bytes | None:
        if self._chunked():
            body = bytearray()
            for data in self._read_chunks():
                body += data
                if len(body) > MAX_RESPONSE_BYTES:
                    self.close_connection = True
                    self._error(413, "RequestEntityTooLarge", "response payload too large")
                    return None
            self._read_trailers()
            return bytes(body)
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_RESPONSE_BYTES:
            self._error(413, "RequestEntityTooLarge", "response payload too large")
            return None
        return self.rfile.read(length) if length else b""

    def do_GET(self) -> None:
        if self.path.startswith(PATH_ADAPTER):
            self._adapter(self.path[len(PATH_ADAPTER):])
            return
        if self.path != PATH_NEXT:
            self._error(404, "NotFound", self.path)
            return
        delivery = self.endpoint.next_delivery()
        if delivery is None:  # instance is being stopped
            self._error(410, "InstanceStopping", "this instance is shutting down")
            return
        try:
            self._reply(200, delivery.payload, delivery.headers())
        except OSError:
            # The runtime is gone (its /next connection closed: it died while waiting): nothing
            # received the request, so the node may place it elsewhere once the exit is seen.
            self.endpoint.delivery_failed(delivery.request_id)
            self.close_connection = True

    def _adapter(self, adapter_id: str) -> None:
        """slfaas extension, shared runtimes: the weights of an adapter whose invocation this
        instance was handed (the body) and its config (a header)."""
        directory = self.endpoint.adapter_dir(adapter_id)
        if directory is None:
            self._error(404, "AdapterNotFound", f"no invocation of this instance uses adapter {adapter_id!r}")
            return
        try:
            config = json.loads((directory / "adapter_config.json").read_bytes())
            weights = (directory / "adapter_model.safetensors").read_bytes()
        except (OSError, ValueError) as exc:
            self._error(500, "AdapterUnreadable", f"adapter {adapter_id}: {exc}")
            return
        self._reply(200, weights, {"Content-Type": "application/octet-stream",
                                   H_ADAPTER_CONFIG: json.dumps(config, separators=(",", ":"))})

    def do_POST(self) -> None:
        m = _INVOCATION_PATH.match(self.path)
        if m and m.group(2) == "response" and \
                self.headers.get(H_FUNCTION_RESPONSE_MODE, "").lower() == STREAMING:
            self._streamed_response(m.group(1))
            return
        try:
            body = self._body()
        except (ConnectionError, ValueError):
            self.close_connection = True
            return
        if body is None:
            return
        if self.path == PATH_INIT_REPORT:
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
        if self.path == PATH_INIT_ERROR:
            self.endpoint.init_failed(body, self.headers.get(H_ERROR_TYPE)
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
            error_type = self.headers.get(H_ERROR_TYPE) or "Runtime.Unknown"
        metrics = None
        if error_type is None:
            # the runtime's measures (device time, batch), for billing; absent: the node bills wall time
            metrics = result_metrics(self.headers.get(H_RESULT_METRICS))
            try:
                metrics = {**(metrics or {}), "device_ms": float(self.headers.get(H_DEVICE_MS, ""))}
            except ValueError:
                pass
        if self.endpoint.complete(request_id, body, error_type, metrics=metrics):
            self._reply(202, b'{"status":"OK"}')
        else:
            self._error(400, "InvalidRequestID", f"unknown or finished request {request_id}")


    def _streamed_response(self, request_id: str) -> None:
        try:
            if self._chunked():
                total = 0
                for data in self._read_chunks():
                    total += len(data)
                    if total > MAX_STREAMED_RESPONSE_BYTES:
                        self.close_connection = True  # stop reading this body
                        self.endpoint.complete(request_id, json.dumps({
                            "errorMessage": f"Response payload size exceeded maximum allowed payload size "
                                            f"({MAX_STREAMED_RESPONSE_BYTES} bytes).",
                            "errorType": "Function.ResponseSizeTooLarge"}).encode(),
                            "Function.ResponseSizeTooLarge", streamed=True)
                        self._error(413, "RequestEntityTooLarge", "streamed response too large")
                        return
                    if not self.endpoint.stream_chunk(request_id, data):
                        self.close_connection = True  # unknown or finished (timed out) request
                        self._error(400, "InvalidRequestID", f"unknown or finished request {request_id}")
                        return
                trailers = self._read_trailers()
            else:
                body = self._body()
                if body is None:
                    return
                if body and not self.endpoint.stream_chunk(request_id, body):
                    self._error(400, "InvalidRequestID", f"unknown or finished request {request_id}")
                    return
                trailers = {}
        except (ConnectionError, ValueError):
            # the runtime died or wrote garbage mid-stream: its exit fails the invocation
            log.debug("streamed response of %s cut short", request_id, exc_info=True)
            self.close_connection = True
            return
        error_type = trailers.get(H_ERROR_TYPE.lower()) or None
        error_body = b""
        if error_type:
            try:
                error_body = base64.b64decode(trailers.get(H_ERROR_BODY.lower(), ""), validate=True)
            except (binascii.Error, ValueError):
                error_body = b""
            if not error_body:
                error_body = json.dumps({"errorMessage": "the function failed while streaming its response",
                                         "errorType": error_type}).encode()
        metrics = result_metrics(trailers.get(H_RESULT_METRICS.lower()))
        if self.endpoint.complete(request_id, error_body, error_type, streamed=True, metrics=metrics):
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
