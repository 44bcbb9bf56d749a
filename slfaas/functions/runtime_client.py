"""Client of the node's Runtime API, over the instance's Unix socket (stdlib only)."""
from __future__ import annotations

import base64
import http.client
import json
import socket

from slfaas.runtime_contract import (H_ADAPTER_CONFIG, H_DEVICE_MS, H_ERROR_BODY, H_ERROR_TYPE, H_FUNCTION_RESPONSE_MODE,
                                     H_RESULT_METRICS, PATH_INIT_ERROR, PATH_INIT_REPORT, PATH_NEXT, STREAMING,
                                     Delivery, adapter_path, invocation_path)

# What /next hands the runtime: the contract's delivery shape.
Invocation = Delivery


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float | None = None):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(self._path)
        self.sock = sock


class NodeGone(ConnectionError):
    """The node closed the API (it is stopping this instance, or it died)."""


class AdapterUnavailable(RuntimeError):
    """The node would not or could not hand over an invocation's adapter (shared runtimes)."""


class ResponseStream:
    """One streamed response (Lambda's ``streaming`` response mode): HTTP/1.1 chunked transfer
    encoding, one chunk per ``write`` sent at once, error or metrics as trailers at the end."""

    def __init__(self, socket_path: str, request_id: str):
        self._conn = _UnixConnection(socket_path)
        try:
            self._conn.putrequest("POST", invocation_path(request_id, "response"), skip_accept_encoding=True)
            self._conn.putheader(H_FUNCTION_RESPONSE_MODE, STREAMING)
            self._conn.putheader("Transfer-Encoding", "chunked")
            self._conn.putheader("Content-Type", "application/octet-stream")
            self._conn.putheader("Trailer", f"{H_ERROR_TYPE}, {H_ERROR_BODY}, {H_RESULT_METRICS}")
            self._conn.endheaders()
        except (OSError, http.client.HTTPException) as exc:
            self._conn.close()
            raise NodeGone(str(exc)) from exc
        self.bytes_sent = 0

    def write(self, data: bytes) -> None:
        if not data:
            return  # a zero-length chunk would end the body
        try:
            self._conn.send(b"%x\r\n%s\r\n" % (len(data), data))
        except OSError as exc:
            raise NodeGone(str(exc)) from exc
        self.bytes_sent += len(data)

    def close(self, error: dict | None = None, metrics: dict | None = None) -> None:
        """End the body; ``error`` (Lambda's error shape) marks a failure after streaming began."""
        trailers = b""
        if error is not None:
            trailers += (f"{H_ERROR_TYPE}: {error.get('errorType', 'Runtime.Unknown')}\r\n"
                         f"{H_ERROR_BODY}: {base64.b64encode(json.dumps(error).encode()).decode()}\r\n"
                         ).encode()
        if metrics:
            trailers += f"{H_RESULT_METRICS}: {json.dumps(metrics, separators=(',', ':'))}\r\n".encode()
        try:
            self._conn.send(b"0\r\n" + trailers + b"\r\n")
            self._conn.getresponse().read()
        except (OSError, http.client.HTTPException) as exc:
            raise NodeGone(str(exc)) from exc
        finally:
            self._conn.close()


class RuntimeClient:
    def __init__(self, socket_path: str):
        self._path = socket_path

    def _request(self, method: str, path: str, body: bytes = b"",
                 headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        conn = _UnixConnection(self._path)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        except (OSError, http.client.HTTPException) as exc:
            raise NodeGone(str(exc)) from exc
        finally:
            conn.close()

    def next(self) -> Invocation:
        status, headers, body = self._request("GET", PATH_NEXT)
        if status != 200:
            raise NodeGone(f"/next answered {status}: {body[:200]!r}")
        return Delivery.from_headers(headers, body)

    def respond(self, request_id: str, body: bytes, device_ms: float | None = None,
                metrics: dict | None = None) -> None:
        """``device_ms``, ``metrics``: the runtime's own measures of the invocation (device time,
        batch; for billing), sent beside the body, which is the handler's to shape."""
        headers = {"Content-Type": "application/json"}
        if metrics:
            headers[H_RESULT_METRICS] = json.dumps(metrics, separators=(",", ":"))
            device_ms = metrics.get("device_ms", device_ms)
        if device_ms is not None:
            headers[H_DEVICE_MS] = f"{device_ms:.3f}"
        self._request("POST", invocation_path(request_id, "response"), body, headers)

    def respond_stream(self, request_id: str) -> ResponseStream:
        return ResponseStream(self._path, request_id)

    def error(self, request_id: str, error: dict) -> None:
        self._request("POST", invocation_path(request_id, "error"), json.dumps(error).encode(),
                      {"Content-Type": "application/json", H_ERROR_TYPE: str(error.get("errorType", "Runtime.Unknown"))})

    def adapter(self, adapter_id: str) -> tuple[dict, bytes]:
        """A shared runtime's: an invocation's adapter from the node (config, safetensors bytes)."""
        status, headers, body = self._request("GET", adapter_path(adapter_id))
        if status != 200:
            raise AdapterUnavailable(f"the node would not hand over adapter {adapter_id}: {status} {body[:200]!r}")
        try:
            config = json.loads(headers.get(H_ADAPTER_CONFIG.lower(), ""))
        except ValueError as exc:
            raise AdapterUnavailable(f"adapter {adapter_id}: unreadable config ({exc})") from exc
        if not isinstance(config, dict):
            raise AdapterUnavailable(f"adapter {adapter_id}: its config is not a JSON object")
        return config, body

    def init_report(self, report: dict) -> None:
        self._request("POST", PATH_INIT_REPORT, json.dumps(report).encode(),
                      {"Content-Type": "application/json"})

    def init_error(self, error: dict) -> None:
        self._request("POST", PATH_INIT_ERROR, json.dumps(error).encode(),
                      {"Content-Type": "application/json", H_ERROR_TYPE: str(error.get("errorType", "Runtime.InitError"))})
