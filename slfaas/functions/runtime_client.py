"""Client of the node's Runtime API, over the instance's Unix socket (stdlib only)."""
from __future__ import annotations

import http.client
import json
import socket
from dataclasses import dataclass

API_PREFIX = "/2018-06-01/runtime"


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
        )

    def respond(self, request_id: str, body: bytes) -> None:
        self._request("POST", f"/invocation/{request_id}/response", body,
                      {"Content-Type": "application/json"})

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
