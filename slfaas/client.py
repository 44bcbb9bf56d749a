"""How the CLI talks to a server: boto3 for the Lambda API, urllib for slfaas's own endpoints."""
from __future__ import annotations

import io
import json
import os
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

DEFAULT_ENDPOINT = "http://127.0.0.1:9000"


class CliError(Exception):
    """A one-line message for the user; the CLI exits non-zero with it."""


def endpoint_default() -> str:
    return os.environ.get("SLFAAS_ENDPOINT", DEFAULT_ENDPOINT)


def lambda_client(endpoint: str, max_pool_connections: int = 10) -> Any:
    """boto3's Lambda client for ``endpoint``; ``max_pool_connections``: concurrent requests it
    can have open (boto3's default is 10)."""
    import boto3
    from botocore.config import Config

    session = boto3.session.Session(
        aws_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID", "slfaas"),
        aws_secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY", "slfaas"),
        region_name=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
    )
    return session.client("lambda", endpoint_url=endpoint,
                          config=Config(retries={"total_max_attempts": 1}, read_timeout=900, connect_timeout=5,
                                        max_pool_connections=max_pool_connections))


def signed_headers(method: str, url: str, data: bytes | None, headers: dict[str, str]) -> dict[str, str]:
    """``headers`` plus a SigV4 signature with the same credentials as ``lambda_client`` (a server
    started with ``--auth sigv4`` checks it; one without ignores it)."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    request = AWSRequest(method=method, url=url, data=data or b"", headers=headers)
    SigV4Auth(Credentials(os.environ.get("AWS_ACCESS_KEY_ID", "slfaas"),
                          os.environ.get("AWS_SECRET_ACCESS_KEY", "slfaas"),
                          os.environ.get("AWS_SESSION_TOKEN") or None),
              "lambda", os.environ.get("AWS_DEFAULT_REGION", "us-east-1")).add_auth(request)
    return dict(request.headers.items())


@dataclass(frozen=True)
class ApiResponse:
    body: Any                    # parsed JSON, text, or None when empty
    headers: Mapping[str, str]


def api(endpoint: str, method: str, path: str, body: Any = None, timeout_s: float = 60) -> Any:
    return api_request(endpoint, method, path, body, timeout_s).body


def api_request(endpoint: str, method: str, path: str, body: Any = None, timeout_s: float = 60) -> ApiResponse:
    """One call to slfaas's own endpoints; an AWS-shaped error becomes ``CliError("Type: message")``."""
    data = None if body is None else json.dumps(body).encode()
    url = endpoint.rstrip("/") + path
    req = urllib.request.Request(url, data=data, method=method,
                                 headers=signed_headers(method, url, data, {"Content-Type": "application/json"}))
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            raw = resp.read()
            headers = dict(resp.headers.items())
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read()).get("message", exc.reason)
        except ValueError:
            message = exc.reason
        raise CliError(f"{exc.headers.get('x-amzn-ErrorType', exc.code)}: {message}")
    except urllib.error.URLError as exc:
        raise CliError(unreachable(endpoint, exc.reason))
    except (TimeoutError, ConnectionError) as exc:
        raise CliError(unreachable(endpoint, exc.__class__.__name__))
    if not raw:
        return ApiResponse(None, headers)
    ctype = headers.get("Content-Type", "")
    return ApiResponse(json.loads(raw) if "json" in ctype else raw.decode("utf-8", "replace"), headers)


def unreachable(endpoint: str, why: object) -> str:
    return f"cannot reach slfaas at {endpoint} ({why}); is `slfaas server` running? (--endpoint / SLFAAS_ENDPOINT)"


def zip_adapter(adapter_dir: Path) -> bytes:
    """Zip the adapter directory's files at the zip root (where the runtime looks for them)."""
    adapter_dir = Path(adapter_dir)
    if not adapter_dir.is_dir():
        raise CliError(f"adapter directory not found: {adapter_dir}")
    for required in ("adapter_config.json", "adapter_model.safetensors"):
        if not (adapter_dir / required).is_file():
            raise CliError(f"{adapter_dir} has no {required}: is it a PEFT LoRA adapter (save_pretrained)?")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(adapter_dir.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                zf.write(path, path.relative_to(adapter_dir).as_posix())
    return buf.getvalue()
