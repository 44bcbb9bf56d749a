"""Acceptance 2: bad input gets the modelled AWS exception (a 4xx with x-amzn-ErrorType), never a
500, nothing half-created is left behind, and the server stays up through all of it."""
from __future__ import annotations

import base64
import io
import json
import zipfile

import pytest

from tests.conftest import deploy
from tests.integration._util import ROLE, assert_healthy, invoke, raw_http


@pytest.fixture(scope="module")
def client(module_server):  # type: ignore[no-untyped-def]
    return module_server.client()


@pytest.fixture(scope="module")
def good_fn(tiny_assets, client):  # type: ignore[no-untyped-def]
    """A working function, so invoke errors are about the payload and not the function."""
    deploy(client, "good", tiny_assets.zip(tiny_assets.adapter_a))
    return "good"


def _zip_of(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _adapter_files(adapter) -> dict[str, bytes]:  # type: ignore[no-untyped-def]
    return {p.name: p.read_bytes() for p in adapter.iterdir() if p.is_file()}


def _create(client, name: str, zip_bytes: bytes, **params):  # type: ignore[no-untyped-def]
    return client.create_function(FunctionName=name, Runtime=params.pop("Runtime", "slfaas-lora"), Role=ROLE,
                                  Code={"ZipFile": zip_bytes}, **params)


def _expect(client, exc_name: str, call, status: int = 400):  # type: ignore[no-untyped-def]
    exc_type = getattr(client.exceptions, exc_name)
    with pytest.raises(exc_type) as exc_info:
        call()
    err = exc_info.value.response
    assert err["ResponseMetadata"]["HTTPStatusCode"] == status
    assert err["Error"]["Code"] == exc_name
    return err["Error"]["Message"]


def _assert_absent(client, name: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        client.get_function(FunctionName=name)


BAD_CREATES = {
    "not-a-zip": lambda a: b"this is not a zip file at all",
    "empty-zip": lambda a: _zip_of({}),
    "no-adapter-config": lambda a: _zip_of({k: v for k, v in _adapter_files(a.adapter_a).items()
                                            if k != "adapter_config.json"}),
    "no-adapter-weights": lambda a: _zip_of({k: v for k, v in _adapter_files(a.adapter_a).items()
                                             if k != "adapter_model.safetensors"}),
    "config-not-json": lambda a: _zip_of({**_adapter_files(a.adapter_a), "adapter_config.json": b"{oops"}),
    "weights-garbage": lambda a: _zip_of({**_adapter_files(a.adapter_a),
                                          "adapter_model.safetensors": b"\x00" * 3}),
    "path-escape": lambda a: _zip_of({**_adapter_files(a.adapter_a), "../evil.txt": b"x"}),
}


@pytest.mark.parametrize("case", sorted(BAD_CREATES))
def test_bad_code_zip_is_invalid_parameter(tiny_assets, module_server, client, case):  # type: ignore[no-untyped-def]
    name = f"bad-{case}"
    zip_bytes = BAD_CREATES[case](tiny_assets)
    message = _expect(client, "InvalidParameterValueException", lambda: _create(client, name, zip_bytes))
    assert message
    _assert_absent(client, name)
    assert_healthy(module_server)


def test_missing_adapter_files_are_named(tiny_assets, client):  # type: ignore[no-untyped-def]
    files = _adapter_files(tiny_assets.adapter_a)
    msg = _expect(client, "InvalidParameterValueException", lambda: _create(
        client, "nocfg", _zip_of({k: v for k, v in files.items() if k != "adapter_config.json"})))
    assert "adapter_config.json" in msg
    msg = _expect(client, "InvalidParameterValueException", lambda: _create(
        client, "nowts", _zip_of({k: v for k, v in files.items() if k != "adapter_model.safetensors"})))
    assert "adapter_model.safetensors" in msg


def test_misfit_adapter_mentions_shape(tiny_assets, module_server, client):  # type: ignore[no-untyped-def]
    msg = _expect(client, "InvalidParameterValueException",
                  lambda: _create(client, "misfit", tiny_assets.zip(tiny_assets.misfit_adapter)))
    assert "shape" in msg.lower()
    _assert_absent(client, "misfit")
    # The same adapter against its own base model fits.
    cfg = deploy(client, "misfit-ok", tiny_assets.zip(tiny_assets.misfit_adapter),
                 Environment={"Variables": {"SLFAAS_BASE_MODEL": str(tiny_assets.other_base)}})
    assert cfg["State"] == "Active"
    client.delete_function(FunctionName="misfit-ok")
    assert_healthy(module_server)


def test_unknown_base_model(tiny_assets, module_server, client):  # type: ignore[no-untyped-def]
    zip_a = tiny_assets.zip(tiny_assets.adapter_a)
    for ref in ("no-such-model", "/definitely/not/a/model/dir"):
        msg = _expect(client, "InvalidParameterValueException", lambda: _create(
            client, "nobase", zip_a, Environment={"Variables": {"SLFAAS_BASE_MODEL": ref}}))
        assert ref in msg
        _assert_absent(client, "nobase")
    assert_healthy(module_server)


def test_bad_create_parameters(tiny_assets, module_server, client):  # type: ignore[no-untyped-def]
    zip_a = tiny_assets.zip(tiny_assets.adapter_a)
    msg = _expect(client, "InvalidParameterValueException", lambda: _create(client, "py", zip_a,
                                                                            Runtime="python3.12"))
    assert "python3.12" in msg
    _assert_absent(client, "py")
    _expect(client, "InvalidParameterValueException",
            lambda: _create(client, "envres", zip_a, Environment={"Variables": {"AWS_LAMBDA_FUNCTION_NAME": "x"}}))
    _assert_absent(client, "envres")
    # Variables the OS cannot pass to a process would leave a function that can never start.
    for variables in ({"A=B": "x"}, {"A": "x\u0000y"}):
        _expect(client, "InvalidParameterValueException",
                lambda: _create(client, "envbad", zip_a, Environment={"Variables": variables}))
        _assert_absent(client, "envbad")
    assert_healthy(module_server)


def test_duplicate_create_is_conflict(tiny_assets, good_fn, client):  # type: ignore[no-untyped-def]
    before = client.get_function_configuration(FunctionName=good_fn)
    _expect(client, "ResourceConflictException",
            lambda: _create(client, good_fn, tiny_assets.zip(tiny_assets.adapter_b)), status=409)
    after = client.get_function_configuration(FunctionName=good_fn)
    assert after["CodeSha256"] == before["CodeSha256"]  # the original is untouched
    assert after["RevisionId"] == before["RevisionId"]


def test_bad_update_keeps_the_function(tiny_assets, good_fn, client):  # type: ignore[no-untyped-def]
    before = client.get_function_configuration(FunctionName=good_fn)
    _expect(client, "InvalidParameterValueException",
            lambda: client.update_function_code(FunctionName=good_fn, ZipFile=b"not a zip"))
    msg = _expect(client, "InvalidParameterValueException",
                  lambda: client.update_function_code(FunctionName=good_fn,
                                                      ZipFile=tiny_assets.zip(tiny_assets.misfit_adapter)))
    assert "shape" in msg.lower()
    _expect(client, "InvalidParameterValueException", lambda: client.update_function_configuration(
        FunctionName=good_fn, Environment={"Variables": {"SLFAAS_BASE_MODEL": "no-such-model"}}))
    _expect(client, "InvalidParameterValueException", lambda: client.update_function_configuration(
        FunctionName=good_fn, Runtime="python3.12"))
    after = client.get_function_configuration(FunctionName=good_fn)
    for key in ("CodeSha256", "RevisionId", "Timeout", "MemorySize", "State", "LastUpdateStatus"):
        assert after[key] == before[key], key


def test_invoke_payload_not_json(good_fn, module_server, client):  # type: ignore[no-untyped-def]
    for payload in (b"{not json", b"\xff\xfe\x00", b'{"prompt": "x"', b"[" * 100_000):
        _expect(client, "InvalidRequestContentException",
                lambda: client.invoke(FunctionName=good_fn, Payload=payload))
    assert_healthy(module_server)


def test_invoke_event_errors_are_function_errors(good_fn, module_server, client):  # type: ignore[no-untyped-def]
    resp, body = invoke(client, good_fn, {"text": "no prompt here"})
    assert resp["StatusCode"] == 200
    assert resp.get("FunctionError")
    assert "prompt" in body["errorMessage"]
    assert body["errorType"]

    for bad in ("ten", 2.5, True, [4], -1, 0):
        resp, body = invoke(client, good_fn, {"prompt": "hi", "max_tokens": bad})
        assert resp["StatusCode"] == 200
        assert resp.get("FunctionError"), (bad, body)
        assert "max_tokens" in body["errorMessage"]

    resp, body = invoke(client, good_fn, ["a", "list"])
    assert resp.get("FunctionError") and "prompt" in body["errorMessage"]

    # The instance survived its handler errors: the next invocation is warm and fine.
    resp, body = invoke(client, good_fn, {"prompt": "hi", "max_tokens": 3, "temperature": 0})
    assert "FunctionError" not in resp, body
    assert body["metrics"]["cold_start"] is False
    assert_healthy(module_server)


def _assert_modelled_4xx(status: int, headers: dict, body: bytes, code: str | None = None) -> None:
    assert 400 <= status < 500, (status, body)
    assert headers.get("x-amzn-errortype"), (status, headers)
    if code is not None:
        assert headers["x-amzn-errortype"] == code, (headers["x-amzn-errortype"], body)
    assert json.loads(body)["message"]


def test_raw_http_malformed_create_body(tiny_assets, module_server):  # type: ignore[no-untyped-def]
    url = module_server.url
    zip_b64 = base64.b64encode(tiny_assets.zip(tiny_assets.adapter_a)).decode()
    good = {"FunctionName": "rawfn", "Runtime": "slfaas-lora", "Role": ROLE, "Code": {"ZipFile": zip_b64}}
    cases: list[tuple[bytes, str]] = [
        (b"{not json", "InvalidRequestContentException"),
        (b"\xff\xfe\xfd", "InvalidRequestContentException"),
        (b"[1, 2, 3]", "InvalidRequestContentException"),
        (b'"a string"', "InvalidRequestContentException"),
        (b"[" * 100_000, "InvalidRequestContentException"),  # nested too deep for the parser
        (b'{"a": ' * 50_000, "InvalidRequestContentException"),
        (json.dumps({**good, "FunctionName": 5}).encode(), "InvalidParameterValueException"),
        (json.dumps({**good, "FunctionName": "has space"}).encode(), "InvalidParameterValueException"),
        (json.dumps({**good, "Role": None}).encode(), "InvalidParameterValueException"),
        (json.dumps({**good, "Code": "zip"}).encode(), "InvalidParameterValueException"),
        (json.dumps({**good, "Code": {}}).encode(), "InvalidParameterValueException"),
        (json.dumps({**good, "Code": {"ZipFile": 123}}).encode(), "InvalidParameterValueException"),
        (json.dumps({**good, "Code": {"ZipFile": "***not base64***"}}).encode(), "InvalidParameterValueException"),
        (json.dumps({**good, "Code": {"S3Bucket": "b", "S3Key": "k"}}).encode(), "InvalidParameterValueException"),
        (json.dumps({**good, "Timeout": "abc"}).encode(), "InvalidParameterValueException"),
        (json.dumps({**good, "Timeout": 0}).encode(), "InvalidParameterValueException"),
        (json.dumps({**good, "Timeout": 2.5}).encode(), "InvalidParameterValueException"),
        (json.dumps({**good, "MemorySize": 10 ** 30}).encode(), "InvalidParameterValueException"),
        (json.dumps({**good, "Environment": "x"}).encode(), "InvalidParameterValueException"),
        (json.dumps({**good, "Environment": {"Variables": None}}).encode(), "InvalidParameterValueException"),
        (json.dumps({**good, "Environment": {"Variables": {"A": 1}}}).encode(), "InvalidParameterValueException"),
        (json.dumps({**good, "Environment": {"Variables": ["A"]}}).encode(), "InvalidParameterValueException"),
        (json.dumps({**good, "PackageType": "Image"}).encode(), "InvalidParameterValueException"),
    ]
    for body, code in cases:
        status, headers, out = raw_http(url, "POST", "/2015-03-31/functions", body)
        _assert_modelled_4xx(status, headers, out, code)
    status, _, _ = raw_http(url, "GET", "/2015-03-31/functions/rawfn")
    assert status == 404  # none of them created the function
    assert_healthy(module_server)


def test_raw_http_other_malformed_requests(good_fn, module_server):  # type: ignore[no-untyped-def]
    url = module_server.url
    cases: list[tuple[str, str, bytes | None, dict | None]] = [
        ("PUT", f"/2015-03-31/functions/{good_fn}/configuration", b"{not json", None),
        ("PUT", f"/2015-03-31/functions/{good_fn}/configuration", b'{"Timeout": "x"}', None),
        ("PUT", f"/2015-03-31/functions/{good_fn}/configuration", b'{"MemorySize": -5}', None),
        ("PUT", f"/2015-03-31/functions/{good_fn}/configuration", b'{"Environment": {"Variables": 7}}', None),
        ("PUT", f"/2015-03-31/functions/{good_fn}/code", b"{not json", None),
        ("PUT", f"/2015-03-31/functions/{good_fn}/code", b'{"ZipFile": 5}', None),
        ("PUT", f"/2015-03-31/functions/{good_fn}/code", b'{"ZipFile": "@@@"}', None),
        ("PUT", f"/2015-03-31/functions/{good_fn}/code", b"{}", None),
        ("GET", "/2015-03-31/functions?MaxItems=abc", None, None),
        ("GET", "/2015-03-31/functions?MaxItems=0", None, None),
        ("GET", "/2015-03-31/functions?Marker=%2Fw%3D%3D", None, None),
        ("GET", "/2015-03-31/functions?Marker=%25%25%25", None, None),
        ("GET", "/2015-03-31/functions/bad%20name", None, None),
        ("GET", f"/2015-03-31/functions/{good_fn}?Qualifier=7", None, None),
        ("POST", f"/2015-03-31/functions/{good_fn}/invocations", b"{not json", None),
        ("POST", f"/2015-03-31/functions/{good_fn}/invocations", b'{"prompt": "x"}',
         {"X-Amz-Invocation-Type": "Bogus"}),
        ("POST", f"/2015-03-31/functions/{good_fn}/invocations", b'{"prompt": "x"}',
         {"X-Amz-Client-Context": "!!! not base64 !!!"}),
        ("POST", f"/2015-03-31/functions/{good_fn}/invocations", b'{"prompt": "x"}',
         {"X-Amz-Client-Context": base64.b64encode(b"\xff\xfe").decode()}),
        ("POST", f"/2015-03-31/functions/{good_fn}/invocations?Qualifier=3", b'{"prompt": "x"}', None),
        ("DELETE", "/2015-03-31/functions/no-such-fn", None, None),
        ("GET", "/slfaas/v1/invocations?limit=abc", None, None),
        ("GET", "/slfaas/v1/invocations/00000000-0000-0000-0000-000000000000", None, None),
        ("GET", "/slfaas/v1/functions/no-such-fn/logs", None, None),
        ("GET", f"/slfaas/v1/functions/{good_fn}/logs?max_bytes=abc", None, None),
        ("GET", "/slfaas/v1/code/not-a-digest.zip", None, None),
        ("POST", "/slfaas/v1/models", b"{not json", None),
        ("POST", "/slfaas/v1/models", b'{"Name": "m"}', None),
        ("POST", "/slfaas/v1/models", b'{"Name": "m", "Path": "/no/such/dir"}', None),
        ("POST", "/slfaas/v1/models", b'{"Name": "m", "Path": "/tmp/a\\u0000b"}', None),
        ("POST", "/slfaas/v1/models", b"[" * 100_000, None),
        ("PUT", f"/2015-03-31/functions/{good_fn}/configuration",
         b'{"Environment": {"Variables": {"X": "a\\u0000b"}}}', None),
        ("DELETE", "/slfaas/v1/models/no-such-model", None, None),
        ("GET", "/no/such/route", None, None),
        ("PATCH", "/2015-03-31/functions", b"{}", None),
    ]
    for method, path, body, headers in cases:
        hdrs = {"Content-Type": "application/json", **(headers or {})}
        status, got_headers, out = raw_http(url, method, path, body, hdrs)
        assert 400 <= status < 500, (method, path, status, out)
        assert got_headers.get("x-amzn-errortype"), (method, path, got_headers)
    # The function is unchanged and still answers.
    status, _, out = raw_http(url, "POST", f"/2015-03-31/functions/{good_fn}/invocations",
                              b'{"prompt": "still here", "max_tokens": 2, "temperature": 0}')
    assert status == 200 and "text" in json.loads(out)
    assert_healthy(module_server)


def test_server_alive_after_everything(module_server, good_fn, client):  # type: ignore[no-untyped-def]
    assert_healthy(module_server)
    resp, body = invoke(client, good_fn, {"prompt": "after all that", "max_tokens": 4, "temperature": 0})
    assert "FunctionError" not in resp, body
    # No error above was a 500 / unhandled error in the server's log.
    log = "".join(module_server.output)
    assert "unhandled error while serving a request" not in log, log[-4000:]
    assert "Traceback" not in log, log[-4000:]
