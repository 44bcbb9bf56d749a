"""Function code from S3, through moto's real S3 server (ThreadedMotoServer) and boto3 on both
sides: create and update from S3Bucket/S3Key/S3ObjectVersion with AWS's CodeSha256/CodeSize,
the endpoint from --s3-endpoint-url or from boto3's AWS_ENDPOINT_URL_S3, and Lambda's
InvalidParameterValueException for a missing bucket, key or version."""
from __future__ import annotations

import urllib.request

import pytest

from tests.integration._util import ROLE, code_sha256, invoke

WAIT = {"Delay": 0.2, "MaxAttempts": 300}


@pytest.fixture(scope="module")
def bucket(s3_url, tiny_assets):  # type: ignore[no-untyped-def]
    """A versioned bucket holding adapter A's zip twice (v1, then v2 = adapter B)."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_url, region_name="us-east-1", aws_access_key_id="test",
                      aws_secret_access_key="test")
    s3.create_bucket(Bucket="lambda-code")
    s3.put_bucket_versioning(Bucket="lambda-code", VersioningConfiguration={"Status": "Enabled"})
    zip_a, zip_b = tiny_assets.zip(tiny_assets.adapter_a), tiny_assets.zip(tiny_assets.adapter_b)
    v1 = s3.put_object(Bucket="lambda-code", Key="adapters/fn.zip", Body=zip_a)["VersionId"]
    v2 = s3.put_object(Bucket="lambda-code", Key="adapters/fn.zip", Body=zip_b)["VersionId"]
    return {"v1": (v1, zip_a), "v2": (v2, zip_b)}


@pytest.fixture
def s3_env(monkeypatch):  # type: ignore[no-untyped-def]
    """Credentials for the server's S3 client (moto accepts any), inherited by LiveServer."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    return monkeypatch


def test_create_and_update_from_s3(s3_env, s3_url, bucket, live_server_factory) -> None:  # type: ignore[no-untyped-def]
    server = live_server_factory("--s3-endpoint-url", s3_url)
    lam = server.client()
    v1, zip_a = bucket["v1"]
    v2, zip_b = bucket["v2"]
    created = lam.create_function(FunctionName="from-s3", Runtime="slfaas-lora", Role=ROLE,
                                  Code={"S3Bucket": "lambda-code", "S3Key": "adapters/fn.zip"})
    assert created["CodeSha256"] == code_sha256(zip_b) and created["CodeSize"] == len(zip_b)   # the latest
    lam.get_waiter("function_active_v2").wait(FunctionName="from-s3", WaiterConfig=WAIT)
    resp, body = invoke(lam, "from-s3", {"prompt": "ahoy", "max_tokens": 3, "temperature": 0})
    assert "FunctionError" not in resp and body["usage"]["completion_tokens"] >= 1
    with urllib.request.urlopen(lam.get_function(FunctionName="from-s3")["Code"]["Location"], timeout=30) as r:
        assert r.read() == zip_b      # the code location serves the bytes fetched from S3

    updated = lam.update_function_code(FunctionName="from-s3", S3Bucket="lambda-code", S3Key="adapters/fn.zip",
                                       S3ObjectVersion=v1)
    assert updated["CodeSha256"] == code_sha256(zip_a) and updated["CodeSize"] == len(zip_a)
    lam.get_waiter("function_updated_v2").wait(FunctionName="from-s3", WaiterConfig=WAIT)
    assert lam.get_function_configuration(FunctionName="from-s3")["CodeSha256"] == code_sha256(zip_a)

    errors = {
        "NoSuchBucket": dict(S3Bucket="no-such-bucket", S3Key="adapters/fn.zip"),
        "NoSuchKey": dict(S3Bucket="lambda-code", S3Key="adapters/missing.zip"),
        "": dict(S3Bucket="lambda-code", S3Key="adapters/fn.zip", S3ObjectVersion="no-such-version"),
    }
    for s3_code, code in errors.items():
        with pytest.raises(lam.exceptions.InvalidParameterValueException) as info:
            lam.create_function(FunctionName="s3-missing", Runtime="slfaas-lora", Role=ROLE, Code=code)
        message = info.value.response["Error"]["Message"]
        assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
        assert message.startswith(f"Error occurred while GetObject. S3 Error Code: {s3_code}"), message
        with pytest.raises(lam.exceptions.InvalidParameterValueException):
            lam.update_function_code(FunctionName="from-s3", **code)
    with pytest.raises(lam.exceptions.ResourceNotFoundException):
        lam.get_function(FunctionName="s3-missing")
    assert lam.get_function_configuration(FunctionName="from-s3")["CodeSha256"] == code_sha256(zip_a)  # unchanged
    with pytest.raises(lam.exceptions.InvalidParameterValueException):   # both sources at once
        lam.create_function(FunctionName="s3-both", Runtime="slfaas-lora", Role=ROLE,
                            Code={"ZipFile": zip_a, "S3Bucket": "lambda-code", "S3Key": "adapters/fn.zip"})


def test_endpoint_from_boto3_environment(s3_env, s3_url, bucket, live_server_factory) -> None:  # type: ignore[no-untyped-def]
    s3_env.setenv("AWS_ENDPOINT_URL_S3", s3_url)   # boto3's own variable; no --s3-endpoint-url
    lam = live_server_factory().client()
    v1, zip_a = bucket["v1"]
    created = lam.create_function(FunctionName="from-env", Runtime="slfaas-lora", Role=ROLE,
                                  Code={"S3Bucket": "lambda-code", "S3Key": "adapters/fn.zip", "S3ObjectVersion": v1})
    assert created["CodeSha256"] == code_sha256(zip_a) and created["CodeSize"] == len(zip_a)
