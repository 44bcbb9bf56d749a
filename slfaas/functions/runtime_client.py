"""Client of the node's Runtime API, over the instance's Unix socket (stdlib only)."""
from __future__ import annotations

import base64
import http.client
import json
import socket
from dataclasses import dataclass

API_PREFIX = "/2018-06-01/runtime"
STREAMING_MODE_HEADER = "Lambda-Runtime-Function-Response-Mode"
ERROR_TYPE_TRAILER = "Lambda-Runtime-Function-Error-Type"
ERROR_BODY_TRAILER = "Lambda-Runtime-Function-Error-Body"
# slfaas extensions: the node asks for a streamed response on /next (InvokeWithResponseStream);
# a streamed response may end with a trailer of JSON metrics (usage, ttft) for the node's records.
RESPONSE_MODE_HEADER = "Slfaas-Response-Mode"
METRICS_TRAILER = "Slfaas-Result-Metrics"
DEVICE_MS_HEADER = "Slfaas-Device-Ms"   # the runtime's device-time measure of one invocation
# slfaas: the runtime writes this + the request id as a line of its output just before it posts
# an invocation's response or error; the node writes END/REPORT only once it has read that
# line, so the function's log (and LogType=Tail) holds everything the invocation printed.
LOG_SYNC_MARKER = "\x1eslfaas-log-sync "


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


@dataclass(frozen=True)
class Invocation:
    request_id: str
    payload: bytes
    deadline_ms: int
    function_arn: str
    client_context: str | None
    cold_start: bool
    queue_ms: float
    response_stream: bool = False   # the caller reads the response as a stream of chunks


class ResponseStream:
    """One streamed response (Lambda's ``streaming`` response mode): HTTP/1.1 chunked transfer
    encoding, one chunk per ``write`` sent at once, error or metrics as trailers at the end."""

    def __init__(self, socket_path: str, request_id: str):
        self._conn = _UnixConnection(socket_path)
        try:
            self._conn.putrequest("POST", f"{API_PREFIX}/invocation/{request_id}/response",
                                  skip_accept_encoding=True)
            self._conn.putheader(STREAMING_MODE_HEADER, "streaming")
            self._conn.putheader("Transfer-Encoding", "chunked")
            self._conn.putheader("Content-Type", "application/octet-stream")
            self._conn.putheader("Trailer", f"{ERROR_TYPE_TRAILER}, {ERROR_BODY_TRAILER}, {METRICS_TRAILER}")
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
            trailers += (f"{ERROR_TYPE_TRAILER}: {error.get('errorType', 'Runtime.Unknown')}\r\n"
                         f"{ERROR_BODY_TRAILER}: {base64.b64encode(json.dumps(error).encode()).decode()}\r\n"
                         ).encode()
        if metrics:
            trailers += f"{METRICS_TRAILER}: {json.dumps(metrics, separators=(',', ':'))}\r\n".encode()
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
            conn.request(method, API_PREFIX + path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        except (OSError, http.client.HTTPException) as exc:
            raise NodeGone(str(exc)) from exc
        finally:
            conn.close()

    def next(self) -> Invocation:
        status, headers, body = self._request("GET", "/invocation/next")
        if status != 200:
            raise NodeGone(f"/next answered {status}: {body[:200]!r}")
        return Invocation(
            request_id=headers["lambda-runtime-aws-request-id"],
            payload=body,
            deadline_ms=int(headers.get("lambda-runtime-deadline-ms", "0")),
            function_arn=headers.get("lambda-runtime-invoked-function-arn", ""),
            client_context=headers.get("lambda-runtime-client-context"),
            cold_start=headers.get("slfaas-cold-start") == "1",
            queue_ms=float(headers.get("slfaas-queue-ms", "0")),
            response_stream=headers.get(RESPONSE_MODE_HEADER.lower()) == "streaming",
        )

    def respond(self, request_id: str, body: bytes, device_ms: float | None = None) -> None:
        """``device_ms``: the runtime's own measure of the invocation's device time (billing),
        sent beside the body, which is the handler's to shape."""
        headers = {"Content-Type": "application/json"}
        if device_ms is not None:
            headers[DEVICE_MS_HEADER] = f"{device_ms:.3f}"
        self._request("POST", f"/invocation/{request_id}/response", body, headers)

    def respond_stream(self, request_id: str) -> ResponseStream:
        return ResponseStream(self._path, request_id)

    def error(self, request_id: str, error: dict) -> None:
        self._request("POST", f"/invocation/{request_id}/error", json.dumps(error).encode(),
                      {"Content-Type": "application/json",
                       "Lambda-Runtime-Function-Error-Type": str(error.get("errorType", "Runtime.Unknown"))})

    def init_report(self, report: dict) -> None:
        self._request("POST", "/slfaas/init-report", json.dumps(report).encode(),
                      {"Content-Type": "application/json"})

    def init_error(self, error: dict) -> None:
        self._request("POST", "/init/error", json.dumps(error).encode(),
                      {"Content-Type": "application/json",
                       "Lambda-Runtime-Function-Error-Type": str(error.get("errorType", "Runtime.InitError"))})
