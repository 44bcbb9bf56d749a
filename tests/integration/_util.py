"""Small helpers shared by the integration tests (no fixtures here: those live in tests/conftest.py)."""
from __future__ import annotations

import base64
import hashlib
import json
import time
import urllib.error
import urllib.request
from typing import Any, Callable

ROLE = "arn:aws:iam::000000000000:role/t"

# handler.py sources used by several modules

# Sleeps for event["sleep"] seconds (printing a marker first, so a test can tell that the handler
# runs), then answers with its pid: a test can see whether a later invocation hit the same process.
SLEEPER_HANDLER = '''
import os
import time


def handler(event, context):
    seconds = event.get("sleep", 0)
    print(f"sleeper-start {context.aws_request_id} sleep={seconds}", flush=True)
    time.sleep(seconds)
    return {"pid": os.getpid(), "slept": seconds}
'''

# With {"write_backbone": true}: writes into a backbone parameter (mapped read-only → SIGSEGV);
# otherwise the built-in generation handler.
CRASHER_HANDLER = '''
def handler(event, context):
    if event.get("write_backbone"):
        p = next(p for n, p in context.model.named_parameters() if "lora_" not in n)
        p.data.view(-1)[0] = 1.0
        return {"wrote": True}
    return context.generate_event(event)
'''


def code_sha256(zip_bytes: bytes) -> str:
    """AWS's CodeSha256: base64 of the zip's sha256 digest."""
    return base64.b64encode(hashlib.sha256(zip_bytes).digest()).decode()


def invoke(client: Any, name: str, event: Any = None, *, payload: bytes | str | None = None
           ) -> tuple[dict, Any]:
    """Invoke through boto3; returns (response, decoded JSON body or None)."""
    resp = client.invoke(FunctionName=name, Payload=payload if payload is not None else json.dumps(event))
    raw = resp["Payload"].read()
    return resp, (json.loads(raw) if raw else None)


def request_id(resp: dict) -> str:
    return resp["ResponseMetadata"]["RequestId"]


def pid_alive(pid: int) -> bool:
    """True while ``pid`` is a running (not zombie) process."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != "Z"


def wait_for(predicate: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(interval_s)


def node(server: Any, checksums: bool = False) -> dict:
    return server.api("GET", "/slfaas/v1/node" + ("?checksums=1" if checksums else ""))


def instances_of(server: Any, name: str) -> list[dict]:
    return [i for i in node(server)["Instances"] if i["function_name"] == name]


def invocations_of(server: Any, name: str) -> list[dict]:
    return server.api("GET", f"/slfaas/v1/invocations?function={name}")["Invocations"]


def invocation_record(server: Any, rid: str) -> dict:
    return server.api("GET", f"/slfaas/v1/invocations/{rid}")


def raw_http(url: str, method: str, path: str, body: bytes | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """A plain HTTP request (no boto3 validation in the way); never raises on 4xx/5xx."""
    req = urllib.request.Request(url.rstrip("/") + path, data=body, method=method,
                                 headers=headers if headers is not None else {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()


def assert_healthy(server: Any) -> None:
    assert server.alive(), "server process died:\n" + "".join(server.output[-50:])
    assert server.api("GET", "/slfaas/v1/health") == {"status": "ok"}


def aws_error(client: Any, exc_name: str, call: Callable[[], Any], status: int) -> dict:
    """``call()`` must raise boto3's modelled ``exc_name`` with HTTP ``status``; its response."""
    import pytest

    with pytest.raises(getattr(client.exceptions, exc_name)) as exc_info:
        call()
    err = exc_info.value.response
    assert err["ResponseMetadata"]["HTTPStatusCode"] == status, err
    assert err["Error"]["Code"] == exc_name, err
    return err
