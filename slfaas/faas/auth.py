"""Request authentication: AWS Signature Version 4, verified the way AWS verifies it.

``slfaas server --auth sigv4 --credentials FILE`` checks every request (but the health probe)
before it reaches the API. The signature is recomputed with botocore's own SigV4 signer over
the request as received (method, raw path and query, the headers the client signed, the body)
with the secret of the access key the client named, and compared in constant time; the date
must lie within ``max_skew_s`` (AWS: 5 minutes) of the server's clock, so a captured request
replayed later is refused as expired. Errors are AWS's (403, ``x-amzn-ErrorType``):

- no ``Authorization`` header: ``MissingAuthenticationTokenException``
- a malformed one / no date: ``IncompleteSignatureException``
- an unknown access key: ``UnrecognizedClientException``
- a wrong signature (wrong secret, altered request) or a date outside the window:
  ``InvalidSignatureException``

FILE is in the AWS shared-credentials format: every section with ``aws_access_key_id`` and
``aws_secret_access_key`` is one accepted identity. The OpenAI-compatible endpoints (``/v1``),
whose clients cannot sign, also accept ``Authorization: Bearer <access key id>:<secret>``.
"""
from __future__ import annotations

import configparser
import datetime
import hashlib
import hmac
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from flask import Flask

log = logging.getLogger(__name__)

ALGORITHM = "AWS4-HMAC-SHA256"
DEFAULT_MAX_SKEW_S = 300.0
_AMZ_DATE_FORMAT = "%Y%m%dT%H%M%SZ"
_AUTH_RE = re.compile(r"^AWS4-HMAC-SHA256\s+(.*)$", re.S)
UNAUTHENTICATED_PATHS = frozenset({"/slfaas/v1/health"})
METRICS_PATH = "/metrics"
_BAD_SIGNATURE = ("The request signature we calculated does not match the signature you provided. Check your AWS "
                  "Secret Access Key and signing method. Consult the service documentation for details.")


class AuthFailure(Exception):
    """A request that does not authenticate; ``code`` is AWS's error code (HTTP 403)."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Identity:
    access_key_id: str


def load_credentials(path: Path) -> dict[str, str]:
    """access key id → secret, from an AWS shared-credentials (INI) file."""
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with open(path, encoding="utf-8") as fh:
            parser.read_file(fh)
    except (OSError, configparser.Error, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read credentials file {path}: {exc}") from exc
    secrets: dict[str, str] = {}
    for section in parser.sections():
        akid = parser.get(section, "aws_access_key_id", fallback="").strip()
        secret = parser.get(section, "aws_secret_access_key", fallback="").strip()
        if akid and secret:
            secrets[akid] = secret
    if not secrets:
        raise ValueError(f"credentials file {path} has no section with aws_access_key_id and aws_secret_access_key")
    return secrets


def _parse_authorization(value: str) -> tuple[str, str, str, str, list[str], str]:
    """(access key id, date, region, service, signed headers, signature) or IncompleteSignature."""
    m = _AUTH_RE.match(value.strip())
    if not m:
        algorithm = value.split(" ", 1)[0]
        raise AuthFailure("IncompleteSignatureException",
                          f"Authorization header requires the '{ALGORITHM}' algorithm, got '{algorithm[:40]}'.")
    parts: dict[str, str] = {}
    for item in m.group(1).split(","):
        key, sep, val = item.strip().partition("=")
        if sep:
            parts[key.strip()] = val.strip()
    missing = [k for k in ("Credential", "SignedHeaders", "Signature") if not parts.get(k)]
    if missing:
        raise AuthFailure("IncompleteSignatureException",
                          " ".join(f"Authorization header requires '{k}' parameter." for k in missing)
                          + f" Authorization={value[:200]}")
    scope = parts["Credential"].split("/")
    if len(scope) != 5 or scope[4] != "aws4_request" or not all(scope):
        raise AuthFailure("IncompleteSignatureException",
                          f"Credential should be scoped to a valid region, service and date: "
                          f"'{parts['Credential'][:200]}'.")
    signed = [h.strip().lower() for h in parts["SignedHeaders"].split(";") if h.strip()]
    if "host" not in signed:
        raise AuthFailure("InvalidSignatureException", "'Host' or ':authority' must be a 'SignedHeader' in the "
                          "AWS Authorization.")
    return scope[0], scope[1], scope[2], scope[3], signed, parts["Signature"]


class SigV4Verifier:
    def __init__(self, secrets: Mapping[str, str], max_skew_s: float = DEFAULT_MAX_SKEW_S,
                 clock: Callable[[], float] = time.time):
        self.secrets = dict(secrets)
        self.max_skew_s = max_skew_s
        self.clock = clock

    def verify(self, method: str, raw_uri: str, headers: Mapping[str, str], body: bytes) -> Identity:
        """``raw_uri``: path and query exactly as received (percent-encoded); ``headers`` a
        case-insensitive mapping of the received headers."""
        authorization = headers.get("Authorization")
        if not authorization:
            raise AuthFailure("MissingAuthenticationTokenException", "Missing Authentication Token")
        akid, scope_date, region, service, signed, signature = _parse_authorization(authorization)
        amz_date = headers.get("X-Amz-Date") or _from_http_date(headers.get("Date"))
        if not amz_date:
            raise AuthFailure("IncompleteSignatureException",
                              "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header.")
        try:
            ts = datetime.datetime.strptime(amz_date, _AMZ_DATE_FORMAT).replace(tzinfo=datetime.timezone.utc)
        except ValueError:
            raise AuthFailure("IncompleteSignatureException", f"Date must be in ISO-8601 'basic format'. Got "
                              f"'{amz_date[:40]}'. See http://en.wikipedia.org/wiki/ISO_8601")
        secret = self.secrets.get(akid)
        if secret is None:
            raise AuthFailure("UnrecognizedClientException", "The security token included in the request is invalid.")
        if scope_date != amz_date[:8]:
            raise AuthFailure("InvalidSignatureException",
                              f"Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from "
                              f"HTTP: '{scope_date}' != '{amz_date[:8]}', from '{amz_date}'.")
        self._check_time(ts)
        expected = self._signature(method, raw_uri, headers, body, signed, amz_date, akid, secret, region, service)
        if not hmac.compare_digest(expected, signature):
            raise AuthFailure("InvalidSignatureException", _BAD_SIGNATURE)
        return Identity(akid)

    def _check_time(self, ts: datetime.datetime) -> None:
        now = datetime.datetime.fromtimestamp(self.clock(), datetime.timezone.utc)
        skew = datetime.timedelta(seconds=self.max_skew_s)
        fmt = lambda d: d.strftime(_AMZ_DATE_FORMAT)  # noqa: E731
        minutes = f"{self.max_skew_s / 60:g} min."
        if ts < now - skew:
            raise AuthFailure("InvalidSignatureException", f"Signature expired: {fmt(ts)} is now earlier than "
                              f"{fmt(now - skew)} ({fmt(now)} - {minutes})")
        if ts > now + skew:
            raise AuthFailure("InvalidSignatureException", f"Signature not yet current: {fmt(ts)} is still later "
                              f"than {fmt(now + skew)} ({fmt(now)} + {minutes})")

    def _signature(self, method: str, raw_uri: str, headers: Mapping[str, str], body: bytes, signed: list[str],
                   amz_date: str, akid: str, secret: str, region: str, service: str) -> str:
        """botocore's SigV4 signer, run over the received request with the claimed scope."""
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials

        parts = urlsplit(raw_uri)
        path_query = parts.path + (f"?{parts.query}" if parts.query else "")
        if not path_query.startswith("/"):
            path_query = "/" + path_query
        host = headers.get("Host", "")
        signed_headers = {}
        for name in signed:
            value = headers.get(name)
            if value is None:
                raise AuthFailure("InvalidSignatureException", _BAD_SIGNATURE)  # signed, then dropped
            signed_headers[name] = value
        content_sha = signed_headers.get("x-amz-content-sha256")
        if content_sha and content_sha != "UNSIGNED-PAYLOAD" and content_sha != hashlib.sha256(body).hexdigest():
            raise AuthFailure("InvalidSignatureException",
                              "The provided 'x-amz-content-sha256' header does not match what was computed.")
        # http: botocore always hashes the payload then (https may sign UNSIGNED-PAYLOAD instead)
        request = AWSRequest(method=method.upper(), url=f"http://{host}{path_query}", data=body,
                             headers=signed_headers)
        request.context["timestamp"] = amz_date
        signer = SigV4Auth(Credentials(akid, secret), service, region)
        canonical = signer.canonical_request(request)
        return signer.signature(signer.string_to_sign(request, canonical), request)


def _from_http_date(value: str | None) -> str | None:
    if not value:
        return None
    from email.utils import parsedate_to_datetime
    try:
        d = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if d.tzinfo is None:
        d = d.replace(tzinfo=datetime.timezone.utc)
    return d.astimezone(datetime.timezone.utc).strftime(_AMZ_DATE_FORMAT)


def check_bearer(secrets: Mapping[str, str], authorization: str | None) -> Identity | None:
    """``Bearer <access key id>:<secret>`` (the OpenAI endpoints); None if it does not match."""
    if not authorization or not authorization.startswith("Bearer "):
        return None
    akid, sep, secret = authorization[7:].strip().partition(":")
    expected = secrets.get(akid)
    if not sep or expected is None or not hmac.compare_digest(expected.encode(), secret.encode()):
        return None
    return Identity(akid)


def check_scrape_token(token: str | None, authorization: str | None) -> bool:
    """``Authorization: Bearer <token>`` with the configured ``--metrics-token`` (Prometheus's
    ``authorization`` setting); never true without a configured token."""
    if not token or not authorization or not authorization.startswith("Bearer "):
        return False
    return hmac.compare_digest(token.encode(), authorization[7:].strip().encode())


def install(app: "Flask", verifier: SigV4Verifier, metrics_token: str | None = None) -> None:
    """Check every request before routing; failures answer in the API's own error shape.
    ``metrics_token``: a scrape token that ``/metrics`` accepts instead of a signature."""
    from flask import request

    from slfaas.faas.api.errors import aws_error

    @app.before_request
    def _authenticate():  # type: ignore[no-untyped-def]
        if request.path in UNAUTHENTICATED_PATHS:
            return None
        if request.path == METRICS_PATH and check_scrape_token(metrics_token, request.headers.get("Authorization")):
            return None
        openai = request.path == "/v1" or request.path.startswith("/v1/")
        if openai and check_bearer(verifier.secrets, request.headers.get("Authorization")) is not None:
            return None
        raw_uri = request.environ.get("REQUEST_URI") or request.environ.get("RAW_URI") or request.full_path
        try:
            verifier.verify(request.method, raw_uri, request.headers, request.get_data(cache=True))
        except AuthFailure as exc:
            log.info("refused %s %s: %s", request.method, request.path, exc.code)
            if openai:
                from slfaas.faas.api.openai_api import openai_error
                return openai_error(401, str(exc) if exc.code != "MissingAuthenticationTokenException" else
                                    "Missing credentials: send 'Authorization: Bearer <access key id>:<secret>' "
                                    "or sign the request with SigV4", "invalid_request_error", "invalid_api_key")
            return aws_error(403, exc.code, str(exc))
        return None
