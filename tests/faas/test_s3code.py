"""Code from S3 through moto's real HTTP server: the fetched bytes, versions, and Lambda's
error for every way the object can be missing."""
from __future__ import annotations

import pytest

from slfaas.errors import InvalidParameter
from slfaas.faas.s3code import S3CodeFetcher, wants_s3


@pytest.fixture
def s3(s3_url, monkeypatch):  # type: ignore[no-untyped-def]
    import boto3

    for k, v in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    return boto3.client("s3", endpoint_url=s3_url, region_name="us-east-1")


def test_fetch_object_and_versions(s3, s3_url) -> None:  # type: ignore[no-untyped-def]
    s3.create_bucket(Bucket="code-bucket")
    s3.put_bucket_versioning(Bucket="code-bucket", VersioningConfiguration={"Status": "Enabled"})
    v1 = s3.put_object(Bucket="code-bucket", Key="fn/a.zip", Body=b"first")["VersionId"]
    s3.put_object(Bucket="code-bucket", Key="fn/a.zip", Body=b"second")
    fetcher = S3CodeFetcher(s3_url)
    assert fetcher.fetch({"S3Bucket": "code-bucket", "S3Key": "fn/a.zip"}) == b"second"
    assert fetcher.fetch({"S3Bucket": "code-bucket", "S3Key": "fn/a.zip", "S3ObjectVersion": v1}) == b"first"


def test_endpoint_from_boto3_environment(s3, s3_url, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    s3.create_bucket(Bucket="env-bucket")
    s3.put_object(Bucket="env-bucket", Key="k", Body=b"via env")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_url)
    assert S3CodeFetcher().fetch({"S3Bucket": "env-bucket", "S3Key": "k"}) == b"via env"


@pytest.mark.parametrize("code, s3_code", [
    ({"S3Bucket": "no-such-bucket", "S3Key": "k"}, "NoSuchBucket"),
    ({"S3Bucket": "err-bucket", "S3Key": "missing.zip"}, "NoSuchKey"),
    ({"S3Bucket": "err-bucket", "S3Key": "present.zip", "S3ObjectVersion": "nope"}, None),
])
def test_missing_objects_are_lambdas_invalid_parameter(s3, s3_url, code, s3_code) -> None:  # type: ignore[no-untyped-def]
    s3.create_bucket(Bucket="err-bucket")
    s3.put_object(Bucket="err-bucket", Key="present.zip", Body=b"x")
    with pytest.raises(InvalidParameter) as exc_info:
        S3CodeFetcher(s3_url).fetch(code)
    message = str(exc_info.value)
    assert message.startswith("Error occurred while GetObject. S3 Error Code: ")
    if s3_code:
        assert f"S3 Error Code: {s3_code}. S3 Error Message: " in message


def test_unreachable_endpoint_is_invalid_parameter(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    with pytest.raises(InvalidParameter, match="Error occurred while GetObject. S3 Error Code: EndpointConnectionError"):
        S3CodeFetcher("http://127.0.0.1:9").fetch({"S3Bucket": "b-b", "S3Key": "k"})


@pytest.mark.parametrize("code", [
    {"S3Bucket": "only-bucket"}, {"S3Key": "only-key"}, {"S3Bucket": "x", "S3Key": "k"},
    {"S3Bucket": "bad/bucket", "S3Key": "k"}, {"S3Bucket": 5, "S3Key": "k"}, {"S3Bucket": "bkt", "S3Key": ""},
    {"S3Bucket": "bkt", "S3Key": "k", "S3ObjectVersion": 3},
])
def test_bad_fields_fail_before_any_request(code) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidParameter):
        S3CodeFetcher("http://127.0.0.1:9").fetch(code)


def test_wants_s3() -> None:
    assert wants_s3({"S3Bucket": "b"}) and wants_s3({"S3ObjectVersion": "1"})
    assert not wants_s3({"ZipFile": "..."})
