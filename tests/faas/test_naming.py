"""parse_function_ref: names, full and partial ARNs, qualifiers."""
from __future__ import annotations

import pytest

from slfaas.errors import InvalidParameter
from slfaas.faas.naming import FunctionRef, function_arn, parse_function_ref

ARN = "arn:aws:lambda:us-east-1:123456789012:function:my-fn"


@pytest.mark.parametrize("value, qualifier, expected", [
    ("my-fn", None, FunctionRef("my-fn", None)),
    ("My_Fn-2", None, FunctionRef("My_Fn-2", None)),
    ("a" * 64, None, FunctionRef("a" * 64, None)),
    ("my-fn", "prod", FunctionRef("my-fn", "prod")),
    ("my-fn:$LATEST", None, FunctionRef("my-fn", "$LATEST")),
    ("my-fn:7", None, FunctionRef("my-fn", "7")),
    (ARN, None, FunctionRef("my-fn", None)),
    (ARN + ":$LATEST", None, FunctionRef("my-fn", "$LATEST")),
    (ARN + ":live", "live", FunctionRef("my-fn", "live")),
    ("arn:aws-cn:lambda:cn-north-1:123456789012:function:my-fn", None, FunctionRef("my-fn", None)),
    ("arn:aws-us-gov:lambda:us-gov-west-1:123456789012:function:my-fn:3", None, FunctionRef("my-fn", "3")),
    ("123456789012:function:my-fn", None, FunctionRef("my-fn", None)),
    ("123456789012:function:my-fn:beta", None, FunctionRef("my-fn", "beta")),
    ("123456789012:function:my-fn", "$LATEST", FunctionRef("my-fn", "$LATEST")),
])
def test_valid_refs(value, qualifier, expected) -> None:  # type: ignore[no-untyped-def]
    assert parse_function_ref(value, qualifier) == expected


@pytest.mark.parametrize("value, qualifier", [
    ("my-fn:1", "2"),
    (ARN + ":prod", "dev"),
    ("123456789012:function:my-fn:$LATEST", "1"),
])
def test_mismatched_qualifier(value, qualifier) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidParameter, match="does not match the specified qualifier"):
        parse_function_ref(value, qualifier)


@pytest.mark.parametrize("value", [
    "",
    "a" * 65,
    "my fn",
    "my.fn",
    "my/fn",
    "my-fn:",
    "my-fn:$latest",
    "my-fn:a:b",
    "arn:aws:lambda:us-east-1:1234:function:my-fn",          # account is 12 digits
    "arn:aws:s3:us-east-1:123456789012:function:my-fn",       # not lambda
    "arn:aws:lambda:us-east-1:123456789012:layer:my-fn",      # not a function
    "12345:function:my-fn",
])
def test_invalid_names(value) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidParameter, match="failed to satisfy constraint"):
        parse_function_ref(value)


def test_function_arn() -> None:
    assert function_arn("eu-west-1", "f") == "arn:aws:lambda:eu-west-1:000000000000:function:f"
    assert function_arn("eu-west-1", "f", "$LATEST") == "arn:aws:lambda:eu-west-1:000000000000:function:f:$LATEST"
    assert parse_function_ref(function_arn("eu-west-1", "f", "9")) == FunctionRef("f", "9")
