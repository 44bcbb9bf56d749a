"""Issue 3, item 6: tags (TagResource, UntagResource, ListTags, Tags on CreateFunction) and
ARNs that parse like AWS's, through boto3 against a live server."""
from __future__ import annotations

import pytest
from botocore.utils import ArnParser

from tests.conftest import deploy
from tests.integration._util import aws_error, raw_http

WAIT = {"Delay": 0.2, "MaxAttempts": 300}


@pytest.fixture(scope="module")
def client(module_server):  # type: ignore[no-untyped-def]
    return module_server.client()


def test_tags_lifecycle(tiny_assets, client):  # type: ignore[no-untyped-def]
    zip_a = tiny_assets.zip(tiny_assets.adapter_a)
    cfg = deploy(client, "tagged", zip_a, Tags={"team": "ml", "cost-center": "42"})
    arn = cfg["FunctionArn"]
    assert client.list_tags(Resource=arn)["Tags"] == {"team": "ml", "cost-center": "42"}
    assert client.get_function(FunctionName="tagged")["Tags"] == {"team": "ml", "cost-center": "42"}

    resp = client.tag_resource(Resource=arn, Tags={"env": "prod", "team": "platform"})
    assert resp["ResponseMetadata"]["HTTPStatusCode"] == 204
    assert client.list_tags(Resource=arn)["Tags"] == {"team": "platform", "cost-center": "42", "env": "prod"}
    resp = client.untag_resource(Resource=arn, TagKeys=["cost-center", "env", "not-there"])
    assert resp["ResponseMetadata"]["HTTPStatusCode"] == 204
    assert client.list_tags(Resource=arn)["Tags"] == {"team": "platform"}

    # Deleting the function deletes its tags: a new function of that name starts without them.
    client.delete_function(FunctionName="tagged")
    aws_error(client, "ResourceNotFoundException", lambda: client.list_tags(Resource=arn), 404)
    deploy(client, "tagged", zip_a)
    assert client.list_tags(Resource=arn)["Tags"] == {}
    assert "Tags" not in client.get_function(FunctionName="tagged")
    client.delete_function(FunctionName="tagged")


def test_tag_errors(tiny_assets, module_server, client):  # type: ignore[no-untyped-def]
    cfg = deploy(client, "tagerr", tiny_assets.zip(tiny_assets.adapter_a))
    arn = cfg["FunctionArn"]
    version = client.publish_version(FunctionName="tagerr")
    client.get_waiter("published_version_active").wait(FunctionName="tagerr", Qualifier="1", WaiterConfig=WAIT)
    alias = client.create_alias(FunctionName="tagerr", Name="prod", FunctionVersion="1")
    for qualified in (version["FunctionArn"], alias["AliasArn"], arn + ":$LATEST"):
        err = aws_error(client, "InvalidParameterValueException",
                     lambda: client.tag_resource(Resource=qualified, Tags={"a": "b"}), 400)
        assert "aliases and versions" in err["Error"]["Message"]
        aws_error(client, "InvalidParameterValueException", lambda: client.list_tags(Resource=qualified), 400)
    missing = arn.replace(":tagerr", ":no-such-fn")
    aws_error(client, "ResourceNotFoundException", lambda: client.tag_resource(Resource=missing, Tags={"a": "b"}), 404)
    aws_error(client, "ResourceNotFoundException", lambda: client.untag_resource(Resource=missing, TagKeys=["a"]), 404)
    aws_error(client, "ResourceNotFoundException", lambda: client.list_tags(Resource=missing), 404)
    for bad in ("tagerr", "arn:aws:s3:::bucket", "arn:aws:lambda:us-east-1:000000000000:layer:x"):
        aws_error(client, "InvalidParameterValueException", lambda: client.list_tags(Resource=bad), 400)
    aws_error(client, "InvalidParameterValueException",
           lambda: client.tag_resource(Resource=arn, Tags={"aws:reserved": "x"}), 400)
    aws_error(client, "InvalidParameterValueException",
           lambda: client.tag_resource(Resource=arn, Tags={"k" * 129: "x"}), 400)
    client.tag_resource(Resource=arn, Tags={f"k{i}": "v" for i in range(45)})
    aws_error(client, "InvalidParameterValueException",
           lambda: client.tag_resource(Resource=arn, Tags={f"n{i}": "v" for i in range(6)}), 400)  # > 50 in all
    assert len(client.list_tags(Resource=arn)["Tags"]) == 45
    aws_error(client, "InvalidParameterValueException", lambda: client.create_function(
        FunctionName="tagbad", Runtime="slfaas-lora", Role="arn:aws:iam::000000000000:role/t",
        Code={"ZipFile": tiny_assets.zip(tiny_assets.adapter_a)}, Tags={"aws:x": "y"}), 400)
    aws_error(client, "ResourceNotFoundException", lambda: client.get_function(FunctionName="tagbad"), 404)
    for body in (b'{"Tags": "x"}', b'{"Tags": {"a": 1}}', b"{}", b"{nope"):
        status, headers, out = raw_http(module_server.url, "POST", f"/2017-03-31/tags/{arn}", body)
        assert status == 400 and headers["x-amzn-errortype"].endswith("Exception"), out


def test_arns_parse_like_aws(tiny_assets, client):  # type: ignore[no-untyped-def]
    cfg = deploy(client, "arny", tiny_assets.zip(tiny_assets.adapter_a))
    v = client.publish_version(FunctionName="arny")
    client.get_waiter("published_version_active").wait(FunctionName="arny", Qualifier="1", WaiterConfig=WAIT)
    alias = client.create_alias(FunctionName="arny", Name="live", FunctionVersion="1")
    parser = ArnParser()
    for arn, resource in ((cfg["FunctionArn"], "function:arny"), (v["FunctionArn"], "function:arny:1"),
                          (alias["AliasArn"], "function:arny:live")):
        parsed = parser.parse_arn(arn)
        assert (parsed["partition"], parsed["service"], parsed["region"], parsed["resource"]) == \
            ("aws", "lambda", "us-east-1", resource)
        assert len(parsed["account"]) == 12 and parsed["account"].isdigit()
        # Every ARN we hand out names the function again, with its qualifier.
        got = client.get_function_configuration(FunctionName=arn)
        assert got["FunctionName"] == "arny"
        assert got["Version"] == ("$LATEST" if arn == cfg["FunctionArn"] else "1")
    assert client.invoke(FunctionName=alias["AliasArn"], InvocationType="DryRun")["StatusCode"] == 204
