"""ARNs we hand out parse like AWS's (botocore's own ARN parser agrees); tag validation."""
from __future__ import annotations

import pytest
from botocore.utils import ArnParser

from slfaas.errors import InvalidParameter
from slfaas.faas.naming import LambdaArn, function_arn, parse_function_ref, parse_lambda_arn
from slfaas.faas.tags import MAX_TAGS, validate_tags


@pytest.mark.parametrize("qualifier", [None, "$LATEST", "7", "prod"])
def test_emitted_arns_parse_everywhere(qualifier) -> None:  # type: ignore[no-untyped-def]
    arn = function_arn("eu-west-1", "my-fn", qualifier)
    parsed = ArnParser().parse_arn(arn)
    assert (parsed["partition"], parsed["service"], parsed["region"], parsed["account"]) == \
        ("aws", "lambda", "eu-west-1", "000000000000")
    assert parsed["resource"] == "function:my-fn" + (f":{qualifier}" if qualifier else "")
    ours = parse_lambda_arn(arn)
    assert ours == LambdaArn("aws", "eu-west-1", "000000000000", "my-fn", qualifier)
    assert str(ours) == arn
    assert parse_function_ref(arn).qualifier == qualifier


@pytest.mark.parametrize("value", [
    "my-fn", "arn:aws:lambda:us-east-1:000000000000:function:", "arn:aws:s3:::bucket",
    "arn:aws:lambda:us-east-1:123:function:fn", "arn:aws:lambda:us-east-1:000000000000:layer:x",
    "arn:aws:lambda:us-east-1:000000000000:function:fn:a:b", ""])
def test_bad_arns(value: str) -> None:
    with pytest.raises(InvalidParameter):
        parse_lambda_arn(value)


def test_validate_tags() -> None:
    assert validate_tags({"team": "ml", "empty": ""}) == {"team": "ml", "empty": ""}
    for bad in ("x", {"": "v"}, {"k" * 129: "v"}, {"k": "v" * 257}, {"k": 1}, {"aws:x": "v"},
                {f"k{i}": "v" for i in range(MAX_TAGS + 1)}):
        with pytest.raises(InvalidParameter):
            validate_tags(bad)
