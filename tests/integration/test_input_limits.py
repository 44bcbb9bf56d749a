"""Input limits through boto3 against a live server: AWS's limits (250 MB unzipped code, 4 KB
of environment) and every code zip an attacker sent that answered 500, or deployed as Active
and failed at every invoke, are refused by CreateFunction and UpdateFunctionCode with
InvalidParameterValueException; and the data dir's disk use is back at its level after a
rejected and after a deleted function."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.bad_inputs import BAD_ZIP_CASES, adapter_files, bad_zips, huge_unzipped, zip_of
from tests.conftest import LiveServer, deploy
from tests.integration._util import ROLE, assert_healthy, aws_error, invoke

REGISTRY_SLACK_BYTES = 1 << 20   # SQLite keeps pages it freed (and its write-ahead log) for reuse


@pytest.fixture(scope="module")
def server(tmp_path_factory):  # type: ignore[no-untyped-def]
    s = LiveServer(tmp_path_factory.mktemp("limits-data"), "--keep-alive-s", "600").start()
    yield s
    if s.alive():
        s.stop()


@pytest.fixture(scope="module")
def client(server):  # type: ignore[no-untyped-def]
    return server.client()


@pytest.fixture(scope="module")
def zips(tiny_assets) -> dict[str, bytes]:  # type: ignore[no-untyped-def]
    return bad_zips(tiny_assets.adapter_a)


@pytest.fixture(scope="module")
def good(tiny_assets, client) -> str:  # type: ignore[no-untyped-def]
    deploy(client, "good", tiny_assets.zip(tiny_assets.adapter_a))
    return "good"


def _disk_use(data_dir: Path) -> tuple[int, int]:
    """(bytes on disk under the data dir apart from the registry, the registry's bytes)."""
    other = registry = 0
    for root, dirs, files in os.walk(data_dir):
        for name in files + dirs:
            try:
                used = os.lstat(os.path.join(root, name)).st_blocks * 512
            except FileNotFoundError:
                continue
            if name.startswith("registry.db"):
                registry += used
            else:
                other += used
    return other, registry


def _create(client, name: str, zip_bytes: bytes, **params):  # type: ignore[no-untyped-def]
    return client.create_function(FunctionName=name, Runtime="slfaas-lora", Role=ROLE, Code={"ZipFile": zip_bytes},
                                  **params)


@pytest.mark.parametrize("case", sorted(BAD_ZIP_CASES))
def test_bad_code_is_refused_by_create_and_update(server, client, zips, good, case):  # type: ignore[no-untyped-def]
    before = client.get_function_configuration(FunctionName=good)
    err = aws_error(client, "InvalidParameterValueException", lambda: _create(client, "bad", zips[case]), 400)
    assert len(err["Error"]["Message"]) < 1000
    aws_error(client, "ResourceNotFoundException", lambda: client.get_function(FunctionName="bad"), 404)
    aws_error(client, "InvalidParameterValueException",
              lambda: client.update_function_code(FunctionName=good, ZipFile=zips[case]), 400)
    after = client.get_function_configuration(FunctionName=good)
    assert (after["CodeSha256"], after["RevisionId"]) == (before["CodeSha256"], before["RevisionId"])
    assert_healthy(server)


def test_unzipped_code_over_250_mb_is_refused(server, client, tiny_assets):  # type: ignore[no-untyped-def]
    raw = huge_unzipped(251, adapter_files(tiny_assets.adapter_a))   # a good adapter beside 251 MiB of zeros
    err = aws_error(client, "InvalidParameterValueException", lambda: _create(client, "huge", raw), 400)
    assert err["Error"]["Message"] == "Unzipped size must be smaller than 262144000 bytes"
    limits = client.get_account_settings()["AccountLimit"]
    assert limits["CodeSizeUnzipped"] == 262144000


def test_environment_over_4_kb_is_refused(server, client, tiny_assets, good):  # type: ignore[no-untyped-def]
    big = {"Variables": {"SECRET": "x" * (300 * 1024)}}
    err = aws_error(client, "InvalidParameterValueException",
                    lambda: _create(client, "bigenv", tiny_assets.zip(tiny_assets.adapter_a), Environment=big), 400)
    assert "exceeded the 4KB limit" in err["Error"]["Message"]
    aws_error(client, "ResourceNotFoundException", lambda: client.get_function(FunctionName="bigenv"), 404)
    aws_error(client, "InvalidParameterValueException",
              lambda: client.update_function_configuration(FunctionName=good, Environment=big), 400)
    resp, body = invoke(client, good, {"prompt": "hi", "max_tokens": 2})
    assert "FunctionError" not in resp, body


def test_disk_use_returns_to_its_level(server, client, zips, tiny_assets, good):  # type: ignore[no-untyped-def]
    code_before, registry_before = _disk_use(server.data_dir)
    for case in sorted(zips):   # rejected creates
        aws_error(client, "InvalidParameterValueException", lambda: _create(client, "bad", zips[case]), 400)
    aws_error(client, "InvalidParameterValueException", lambda: _create(
        client, "huge", huge_unzipped(251, adapter_files(tiny_assets.adapter_a))), 400)
    assert _disk_use(server.data_dir)[0] == code_before
    # A function with 4 MiB of code of its own, invoked (its log), then deleted.
    files = {**adapter_files(tiny_assets.adapter_a), "blob.bin": os.urandom(4 << 20)}
    deploy(client, "bulky", zip_of(files))
    resp, body = invoke(client, "bulky", {"prompt": "hi", "max_tokens": 2})
    assert "FunctionError" not in resp, body
    assert _disk_use(server.data_dir)[0] >= code_before + (8 << 20)   # the zip and its extraction
    client.delete_function(FunctionName="bulky")
    code_after, registry_after = _disk_use(server.data_dir)
    assert code_after == code_before
    assert registry_after - registry_before < REGISTRY_SLACK_BYTES
    assert_healthy(server)
