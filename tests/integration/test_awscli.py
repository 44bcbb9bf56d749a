"""The AWS CLI (``aws lambda … --endpoint-url``, PyPI package awscli) against a live server:
list, invoke, publish a version; and against ``--auth sigv4`` with a right and a wrong key."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import deploy

awscli = pytest.importorskip("awscli")


def aws(url: str, tmp: Path, *args: str, key: str = "test", secret: str = "test") -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_ACCESS_KEY_ID=key, AWS_SECRET_ACCESS_KEY=secret, AWS_DEFAULT_REGION="us-east-1",
               AWS_CONFIG_FILE=str(tmp / "no-config"), AWS_SHARED_CREDENTIALS_FILE=str(tmp / "no-credentials"),
               AWS_MAX_ATTEMPTS="1")
    return subprocess.run([sys.executable, "-m", "awscli", "lambda", *args, "--endpoint-url", url, "--output", "json"],
                          env=env, capture_output=True, text=True, timeout=180)


def _payload_args(event: dict) -> list[str]:
    args = ["--payload", json.dumps(event)]
    if not awscli.__version__.startswith("1."):   # v2 reads blobs as base64 unless told otherwise
        args += ["--cli-binary-format", "raw-in-base64-out"]
    return args


@pytest.fixture(scope="module")
def fn(module_server, tiny_assets):  # type: ignore[no-untyped-def]
    deploy(module_server.client(), "cli-fn", tiny_assets.zip(tiny_assets.adapter_a))
    return "cli-fn"


def test_list_invoke_publish(module_server, fn, tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = aws(module_server.url, tmp_path, "list-functions")
    assert out.returncode == 0, out.stderr
    assert fn in [f["FunctionName"] for f in json.loads(out.stdout)["Functions"]]

    result = tmp_path / "out.json"
    out = aws(module_server.url, tmp_path, "invoke", "--function-name", fn,
              *_payload_args({"prompt": "ahoy", "max_tokens": 4, "temperature": 0}), str(result))
    assert out.returncode == 0, out.stderr
    meta = json.loads(out.stdout)
    assert meta["StatusCode"] == 200 and meta["ExecutedVersion"] == "$LATEST" and "FunctionError" not in meta
    body = json.loads(result.read_text())
    assert body["usage"]["completion_tokens"] >= 1 and isinstance(body["text"], str)

    out = aws(module_server.url, tmp_path, "get-function-configuration", "--function-name", "no-such-fn")
    assert out.returncode != 0 and "ResourceNotFoundException" in out.stderr

    out = aws(module_server.url, tmp_path, "publish-version", "--function-name", fn, "--description", "v1 by cli")
    if out.returncode != 0 and "UnknownOperation" in out.stderr:
        pytest.skip("PublishVersion is not served by this build")
    assert out.returncode == 0, out.stderr
    version = json.loads(out.stdout)
    assert version["Version"] == "1" and version["Description"] == "v1 by cli"
    out = aws(module_server.url, tmp_path, "list-versions-by-function", "--function-name", fn)
    assert out.returncode == 0 and [v["Version"] for v in json.loads(out.stdout)["Versions"]] == ["$LATEST", "1"]
    out = aws(module_server.url, tmp_path, "invoke", "--function-name", fn, "--qualifier", "1",
              *_payload_args({"prompt": "ahoy", "max_tokens": 2}), str(result))
    assert out.returncode == 0 and json.loads(out.stdout)["ExecutedVersion"] == "1", out.stderr


def test_cli_against_sigv4_auth(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tests.conftest import LiveServer

    creds = tmp_path / "server-credentials"
    creds.write_text("[ci]\naws_access_key_id = AKIDCI\naws_secret_access_key = ci-secret\n")
    server = LiveServer(tmp_path / "data", "--auth", "sigv4", "--credentials", str(creds)).start()
    try:
        ok = aws(server.url, tmp_path, "list-functions", key="AKIDCI", secret="ci-secret")
        assert ok.returncode == 0, ok.stderr
        bad = aws(server.url, tmp_path, "list-functions", key="AKIDCI", secret="nope")
        assert bad.returncode != 0 and "InvalidSignatureException" in bad.stderr
    finally:
        server.stop()
