"""Function names and ARNs, parsed the way Lambda parses them."""
from __future__ import annotations

import re
from dataclasses import dataclass

from slfaas.errors import InvalidParameter

ACCOUNT_ID = "000000000000"
NAME_RE = re.compile(r"^[a-zA-Z0-9-_]{1,64}$")
_ARN_RE = re.compile(
    r"^arn:aws[a-zA-Z-]*:lambda:(?P<region>[a-z0-9-]+):(?P<account>\d{12}):function:"
    r"(?P<name>[a-zA-Z0-9-_]{1,64})(?::(?P<qualifier>\$LATEST|[a-zA-Z0-9-_]{1,128}))?$")
_PARTIAL_RE = re.compile(
    r"^(?:(?P<account>\d{12}):function:)?(?P<name>[a-zA-Z0-9-_]{1,64})(?::(?P<qualifier>\$LATEST|[a-zA-Z0-9-_]{1,128}))?$")


@dataclass(frozen=True)
class FunctionRef:
    name: str
    qualifier: str | None


def parse_function_ref(value: str, qualifier: str | None = None) -> FunctionRef:
    """Accept a name, a full ARN or a partial ARN (optionally with a qualifier suffix)."""
    m = _ARN_RE.match(value) or _PARTIAL_RE.match(value)
    if not m:
        raise InvalidParameter(
            f"1 validation error detected: Value '{value}' at 'functionName' failed to satisfy constraint: "
            "Member must satisfy regular expression pattern: "
            "(arn:(aws[a-zA-Z-]*)?:lambda:)?([a-z]{2}(-gov)?-[a-z]+-\\d{1}:)?(\\d{12}:)?(function:)?"
            "([a-zA-Z0-9-_]+)(:(\\$LATEST|[a-zA-Z0-9-_]+))?")
    embedded = m.group("qualifier")
    if embedded and qualifier and embedded != qualifier:
        raise InvalidParameter("The derived qualifier from the function name does not match the specified qualifier.")
    return FunctionRef(m.group("name"), qualifier or embedded)


def function_arn(region: str, name: str, qualifier: str | None = None) -> str:
    arn = f"arn:aws:lambda:{region}:{ACCOUNT_ID}:function:{name}"
    return f"{arn}:{qualifier}" if qualifier else arn


@dataclass(frozen=True)
class LambdaArn:
    """A function, version or alias ARN: ``arn:aws:lambda:REGION:ACCOUNT:function:NAME[:QUALIFIER]``."""

    partition: str
    region: str
    account: str
    name: str
    qualifier: str | None

    def __str__(self) -> str:
        base = f"arn:{self.partition}:lambda:{self.region}:{self.account}:function:{self.name}"
        return f"{base}:{self.qualifier}" if self.qualifier else base


_FULL_ARN_RE = re.compile(
    r"^arn:(?P<partition>aws[a-zA-Z-]*):lambda:(?P<region>[a-z]{2}((-gov)|(-iso([a-z]?)))?-[a-z]+-\d):"
    r"(?P<account>\d{12}):function:(?P<name>[a-zA-Z0-9-_]{1,64})(?::(?P<qualifier>\$LATEST|[a-zA-Z0-9-_]{1,128}))?$")


def parse_lambda_arn(value: str) -> LambdaArn:
    """A full function ARN, as TagResource's ``Resource`` takes it (a name alone is not one)."""
    m = _FULL_ARN_RE.match(value or "")
    if not m:
        raise InvalidParameter(
            f"1 validation error detected: Value '{value}' at 'resource' failed to satisfy constraint: Member must "
            "satisfy regular expression pattern: arn:(aws[a-zA-Z-]*):lambda:[a-z]{2}((-gov)|(-iso([a-z]?)))?-[a-z]+-"
            "\\d{1}:\\d{12}:function:[a-zA-Z0-9-_]+(:(\\$LATEST|[a-zA-Z0-9-_]+))?")
    return LambdaArn(m.group("partition"), m.group("region"), m.group("account"), m.group("name"),
                     m.group("qualifier"))
