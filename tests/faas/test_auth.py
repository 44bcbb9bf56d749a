"""SigV4 verification: requests signed by botocore pass; a wrong secret, an unknown key, a date
outside the window, an altered request and malformed headers get AWS's errors."""
from __future__ import annotations

import datetime
import hashlib
from pathlib import Path

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from werkzeug.datastructures import Headers

from slfaas.faas.auth import AuthFailure, SigV4Verifier, check_bearer, load_credentials

NOW = datetime.datetime(2026, 3, 1, 12, 0, 0, tzinfo=datetime.timezone.utc)
SECRETS = {"AKIDALICE": "alice-secret", "AKIDBOB": "bob/secret+=="}
HOST = "127.0.0.1:9000"


def _sign(monkeypatch, method: str, path: str, body: bytes = b"", akid: str = "AKIDALICE",  # type: ignore[no-untyped-def]
          secret: str = "alice-secret", at: datetime.datetime = NOW, headers: dict | None = None,
          region: str = "us-east-1", service: str = "lambda") -> Headers:
    monkeypatch.setattr("botocore.auth.get_current_datetime", lambda: at.replace(tzinfo=None))
    req = AWSRequest(method=method, url=f"http://{HOST}{path}", data=body, headers=headers or {})
    SigV4Auth(Credentials(akid, secret), service, region).add_auth(req)
    out = Headers(list(req.headers.items()))
    out["Host"] = HOST
    return out


def _verifier(skew_s: float = 300) -> SigV4Verifier:
    return SigV4Verifier(SECRETS, skew_s, clock=lambda: NOW.timestamp())


def _fails(code: str, *args) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(AuthFailure) as exc_info:
        _verifier().verify(*args)
    assert exc_info.value.code == code
    return str(exc_info.value)


PATHS = [
    "/2015-03-31/functions",
    "/2015-03-31/functions/?MaxItems=5&Marker=abc%3D%3D",
    "/2015-03-31/functions/my-fn/invocations?Qualifier=%24LATEST",
    "/2015-03-31/functions/arn%3Aaws%3Alambda%3Aus-east-1%3A000000000000%3Afunction%3Af/configuration",
    "/v1/models/f%3Aprod",
]


@pytest.mark.parametrize("path", PATHS)
def test_botocore_signatures_verify(monkeypatch, path: str) -> None:  # type: ignore[no-untyped-def]
    body = b'{"prompt": "h\xc3\xa9"}'
    headers = _sign(monkeypatch, "POST", path, body, headers={"Content-Type": "application/json",
                                                              "X-Amz-Invocation-Type": "Event"})
    assert _verifier().verify("POST", path, headers, body).access_key_id == "AKIDALICE"
    # another key, another region and service name in the scope: still that key's signature
    headers = _sign(monkeypatch, "GET", path, akid="AKIDBOB", secret="bob/secret+==", region="eu-west-1",
                    service="execute-api")
    assert _verifier().verify("GET", path, headers, b"").access_key_id == "AKIDBOB"


def test_wrong_secret_is_invalid_signature(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    headers = _sign(monkeypatch, "GET", "/2015-03-31/functions", secret="not-alices")
    assert "does not match" in _fails("InvalidSignatureException", "GET", "/2015-03-31/functions", headers, b"")


def test_unknown_key_is_unrecognized_client(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    headers = _sign(monkeypatch, "GET", "/2015-03-31/functions", akid="AKIDMALLORY")
    msg = _fails("UnrecognizedClientException", "GET", "/2015-03-31/functions", headers, b"")
    assert msg == "The security token included in the request is invalid."


@pytest.mark.parametrize("offset_s, text", [(-301, "Signature expired"), (301, "Signature not yet current")])
def test_dates_outside_the_window(monkeypatch, offset_s: int, text: str) -> None:  # type: ignore[no-untyped-def]
    at = NOW + datetime.timedelta(seconds=offset_s)
    headers = _sign(monkeypatch, "GET", "/2015-03-31/functions", at=at)
    msg = _fails("InvalidSignatureException", "GET", "/2015-03-31/functions", headers, b"")
    assert msg.startswith(text) and at.strftime("%Y%m%dT%H%M%SZ") in msg and "5 min." in msg
    # within the window (clock skew) it passes
    headers = _sign(monkeypatch, "GET", "/2015-03-31/functions", at=NOW + datetime.timedelta(seconds=offset_s // 2))
    _verifier().verify("GET", "/2015-03-31/functions", headers, b"")


@pytest.mark.parametrize("change", ["body", "method", "path", "query", "signed-header", "host", "date"])
def test_any_change_to_a_signed_request_breaks_it(monkeypatch, change: str) -> None:  # type: ignore[no-untyped-def]
    path, body = "/2015-03-31/functions/f/invocations?Qualifier=1", b'{"a": 1}'
    headers = _sign(monkeypatch, "POST", path, body, headers={"X-Amz-Invocation-Type": "RequestResponse"})
    method = "POST"
    if change == "body":
        body = b'{"a": 2}'
    elif change == "method":
        method = "PUT"
    elif change == "path":
        path = path.replace("/f/", "/g/")
    elif change == "query":
        path = path.replace("=1", "=2")
    elif change == "signed-header":
        headers["X-Amz-Invocation-Type"] = "Event"
    elif change == "host":
        headers["Host"] = "evil:9000"
    elif change == "date":
        headers["X-Amz-Date"] = (NOW + datetime.timedelta(seconds=1)).strftime("%Y%m%dT%H%M%SZ")
    _fails("InvalidSignatureException", method, path, headers, body)


def test_unsigned_and_malformed_requests(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    assert _fails("MissingAuthenticationTokenException", "GET", "/", Headers([("Host", HOST)]), b"") == \
        "Missing Authentication Token"
    good = _sign(monkeypatch, "GET", "/x")
    for bad_auth in ("Basic dXNlcjpwYXNz", "AWS4-HMAC-SHA256 Credential=AKIDALICE/20260301/us-east-1/lambda/aws4_request",
                     "AWS4-HMAC-SHA256 Credential=AKIDALICE, SignedHeaders=host, Signature=00"):
        h = Headers(good)
        h["Authorization"] = bad_auth
        _fails("IncompleteSignatureException", "GET", "/x", h, b"")
    no_date = Headers(good)
    del no_date["X-Amz-Date"]
    _fails("IncompleteSignatureException", "GET", "/x", no_date, b"")
    no_host = Headers(good)
    no_host["Authorization"] = no_host["Authorization"].replace("SignedHeaders=host;x-amz-date",
                                                                "SignedHeaders=x-amz-date")
    _fails("InvalidSignatureException", "GET", "/x", no_host, b"")


def test_content_sha256_header_must_match_the_body(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    body = b"payload"
    headers = _sign(monkeypatch, "POST", "/x", body,
                    headers={"X-Amz-Content-SHA256": hashlib.sha256(body).hexdigest()})
    _verifier().verify("POST", "/x", headers, body)
    msg = _fails("InvalidSignatureException", "POST", "/x", headers, b"other payload")
    assert "x-amz-content-sha256" in msg


def test_credentials_file(tmp_path: Path) -> None:
    f = tmp_path / "creds"
    f.write_text("[default]\naws_access_key_id = AKID1\naws_secret_access_key = s1\n\n"
                 "[ci]\naws_access_key_id=AKID2\naws_secret_access_key=s%2\n[incomplete]\naws_access_key_id=X\n")
    assert load_credentials(f) == {"AKID1": "s1", "AKID2": "s%2"}
    (tmp_path / "empty").write_text("[x]\n")
    for bad in (tmp_path / "empty", tmp_path / "missing"):
        with pytest.raises(ValueError):
            load_credentials(bad)


def test_bearer_for_openai_clients() -> None:
    assert check_bearer(SECRETS, "Bearer AKIDBOB:bob/secret+==").access_key_id == "AKIDBOB"  # type: ignore[union-attr]
    for bad in (None, "", "Bearer AKIDBOB:wrong", "Bearer AKIDBOB", "Bearer nobody:x", "Basic AKIDBOB:bob/secret+=="):
        assert check_bearer(SECRETS, bad) is None


def test_server_refuses_public_bind_without_auth(tmp_path: Path) -> None:
    from slfaas.faas.server import ServerConfig, check_auth_config, is_loopback

    for host in ("127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"):
        assert is_loopback(host) and check_auth_config(ServerConfig(tmp_path, host=host)) is None
    for host in ("0.0.0.0", "::", "10.1.2.3", "example.com"):
        assert not is_loopback(host)
        with pytest.raises(ValueError, match="refusing to bind"):
            check_auth_config(ServerConfig(tmp_path, host=host))
        assert check_auth_config(ServerConfig(tmp_path, host=host, insecure=True)) is None
    with pytest.raises(ValueError, match="needs --credentials"):
        check_auth_config(ServerConfig(tmp_path, host="0.0.0.0", auth="sigv4"))
    with pytest.raises(ValueError, match="unknown --auth"):
        check_auth_config(ServerConfig(tmp_path, auth="basic"))
    creds = tmp_path / "c"
    creds.write_text("[a]\naws_access_key_id=K\naws_secret_access_key=S\n")
    verifier = check_auth_config(ServerConfig(tmp_path, host="0.0.0.0", auth="sigv4", credentials_file=creds))
    assert verifier is not None and verifier.secrets == {"K": "S"}


def test_scrape_token_for_metrics(tmp_path: Path) -> None:
    from slfaas.faas.auth import check_scrape_token
    from slfaas.faas.server import ServerConfig, check_auth_config

    token = "s3cret-scrape-token-42"
    assert check_scrape_token(token, f"Bearer {token}")
    for bad in (None, "", token, f"Bearer {token}x", f"Bearer {token[:-1]}", f"Basic {token}", "Bearer "):
        assert not check_scrape_token(token, bad)
    assert not check_scrape_token(None, "Bearer ") and not check_scrape_token("", "Bearer ")
    creds = tmp_path / "c"
    creds.write_text("[a]\naws_access_key_id=K\naws_secret_access_key=S\n")
    sigv4 = ServerConfig(tmp_path, auth="sigv4", credentials_file=creds)
    assert check_auth_config(ServerConfig(**{**sigv4.__dict__, "metrics_token": token})) is not None
    for weak in ("short", " " + token, token + "\n", "x" * 15):
        with pytest.raises(ValueError, match="at least 16 printable characters"):
            check_auth_config(ServerConfig(**{**sigv4.__dict__, "metrics_token": weak}))
    with pytest.raises(ValueError, match="--metrics-token is for --auth sigv4"):
        check_auth_config(ServerConfig(tmp_path, metrics_token=token))
