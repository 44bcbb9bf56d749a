"""``slfaas server --auth sigv4 --credentials FILE`` against real clients: boto3 with a good key
works end to end (deploy, invoke, stream), and a wrong secret, an unknown key, an expired date,
a replay after the window and an unsigned request each get AWS's 403 error; the CLI and the
openai client authenticate too. Without --auth the server binds loopback only and says so."""
from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import time

import pytest
from botocore.config import Config

from tests.conftest import ROOT, deploy
from tests.integration._util import raw_http

SKEW_S = 3   # the server's window, small so that a replay expires within the test


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory):  # type: ignore[no-untyped-def]
    from tests.conftest import LiveServer

    d = tmp_path_factory.mktemp("auth")
    creds = d / "credentials"
    creds.write_text("[alice]\naws_access_key_id = AKIDALICE\naws_secret_access_key = alice-secret\n")
    s = LiveServer(d / "data", "--auth", "sigv4", "--credentials", str(creds), "--auth-max-skew-s", str(SKEW_S),
                   "--keep-alive-s", "600").start()
    yield s
    if s.alive():
        s.stop()


def _client(server, akid: str = "AKIDALICE", secret: str = "alice-secret"):  # type: ignore[no-untyped-def]
    import boto3

    return boto3.client("lambda", endpoint_url=server.url, region_name="us-east-1", aws_access_key_id=akid,
                        aws_secret_access_key=secret, config=Config(retries={"total_max_attempts": 1}))


def _refused(call, code: str) -> str:  # type: ignore[no-untyped-def]
    from botocore.exceptions import ClientError

    with pytest.raises(ClientError) as info:
        call()
    err = info.value.response
    assert err["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert err["Error"]["Code"] == code, err
    return err["Error"]["Message"]


def test_start_message_says_how_it_authenticates(auth_server, module_server) -> None:  # type: ignore[no-untyped-def]
    assert any("authentication: sigv4 (1 access key(s)" in line for line in auth_server.output)
    assert any("authentication: none; bound to loopback (127.0.0.1) only" in line for line in module_server.output)


def test_good_signature_works_end_to_end(auth_server, tiny_assets) -> None:  # type: ignore[no-untyped-def]
    lam = _client(auth_server)
    deploy(lam, "guarded", tiny_assets.zip(tiny_assets.adapter_a))
    resp = lam.invoke(FunctionName="guarded", Payload=json.dumps({"prompt": "hi", "max_tokens": 2}))
    assert resp["StatusCode"] == 200 and "FunctionError" not in resp
    events = list(lam.invoke_with_response_stream(FunctionName="guarded", Payload=b'{"prompt": "hi", "max_tokens": 2}')
                  ["EventStream"])
    assert events[-1] == {"InvokeComplete": {}}
    # paths with escaped characters and query strings sign the same on both sides
    arn = "arn:aws:lambda:us-east-1:000000000000:function:guarded"
    assert lam.get_function(FunctionName=arn, Qualifier="$LATEST")["Configuration"]["FunctionName"] == "guarded"
    assert lam.list_functions(MaxItems=1)["Functions"]


def test_wrong_secret_unknown_key_and_unsigned(auth_server) -> None:  # type: ignore[no-untyped-def]
    msg = _refused(lambda: _client(auth_server, secret="wrong").list_functions(), "InvalidSignatureException")
    assert "signature we calculated does not match" in msg
    _refused(lambda: _client(auth_server, akid="AKIDMALLORY").list_functions(), "UnrecognizedClientException")
    from botocore import UNSIGNED
    import boto3
    unsigned = boto3.client("lambda", endpoint_url=auth_server.url, region_name="us-east-1",
                            config=Config(signature_version=UNSIGNED, retries={"total_max_attempts": 1}))
    assert _refused(lambda: unsigned.list_functions(), "MissingAuthenticationTokenException") == \
        "Missing Authentication Token"
    status, headers, body = raw_http(auth_server.url, "GET", "/2015-03-31/functions")
    assert status == 403 and headers["x-amzn-errortype"] == "MissingAuthenticationTokenException"
    status, headers, _ = raw_http(auth_server.url, "GET", "/2015-03-31/functions",
                                  headers={"Authorization": "AWS4-HMAC-SHA256 Credential=garbage"})
    assert status == 403 and headers["x-amzn-errortype"] == "IncompleteSignatureException"
    assert raw_http(auth_server.url, "GET", "/slfaas/v1/health")[0] == 200   # the probe stays open


def test_expired_date_and_replay(auth_server, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    lam = _client(auth_server)
    past = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None) - datetime.timedelta(minutes=10)
    with monkeypatch.context() as m:
        m.setattr("botocore.auth.get_current_datetime", lambda: past)
        msg = _refused(lambda: lam.list_functions(), "InvalidSignatureException")
    assert msg.startswith("Signature expired: ") and past.strftime("%Y%m%dT%H%M%SZ") in msg

    captured: dict = {}

    def capture(request, **_kw):  # type: ignore[no-untyped-def]
        captured.update(url=request.url, headers={k: (v.decode() if isinstance(v, bytes) else v)
                                                  for k, v in request.headers.items()}, body=request.body)

    lam.meta.events.register("before-send.lambda.ListFunctions", capture)
    lam.list_functions()
    path = captured["url"][len(auth_server.url):]
    status, _, _ = raw_http(auth_server.url, "GET", path, headers=captured["headers"])
    assert status == 200        # within the window the same signed request is accepted, as on AWS
    time.sleep(SKEW_S + 1.5)
    status, headers, body = raw_http(auth_server.url, "GET", path, headers=captured["headers"])
    assert status == 403 and headers["x-amzn-errortype"] == "InvalidSignatureException"
    assert json.loads(body)["message"].startswith("Signature expired")


def test_cli_and_openai_client_authenticate(auth_server, tiny_assets) -> None:  # type: ignore[no-untyped-def]
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "AKIDALICE", "AWS_SECRET_ACCESS_KEY": "alice-secret",
           "SLFAAS_ENDPOINT": auth_server.url}
    deploy(_client(auth_server), "cli-guarded", tiny_assets.zip(tiny_assets.adapter_b))
    for args in (["list"], ["logs", "cli-guarded"], ["models", "list"]):
        out = subprocess.run([sys.executable, "-m", "slfaas.cli.main", *args], env=env, cwd=ROOT,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
    bad = subprocess.run([sys.executable, "-m", "slfaas.cli.main", "models", "list"], cwd=ROOT, timeout=120,
                         env={**env, "AWS_SECRET_ACCESS_KEY": "wrong"}, capture_output=True, text=True)
    assert bad.returncode != 0 and "InvalidSignatureException" in bad.stderr

    openai = pytest.importorskip("openai")
    good = openai.OpenAI(base_url=auth_server.url + "/v1", api_key="AKIDALICE:alice-secret", max_retries=0)
    assert "cli-guarded" in [m.id for m in good.models.list()]
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=auth_server.url + "/v1", api_key="AKIDALICE:wrong", max_retries=0).models.list()


def test_no_auth_refuses_a_public_bind(tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = subprocess.run([sys.executable, "-m", "slfaas.cli.main", "server", "--host", "0.0.0.0", "--port", "0",
                          "--data-dir", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "refusing to bind 0.0.0.0 without authentication" in out.stderr
