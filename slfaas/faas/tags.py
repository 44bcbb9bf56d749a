"""Function tags: TagResource, UntagResource, ListTags, and Tags on CreateFunction.

As on AWS, tags belong to a function (its unqualified ARN); version and alias ARNs are refused.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from slfaas.errors import InvalidParameter, NotFound
from slfaas.faas.naming import function_arn, parse_lambda_arn

if TYPE_CHECKING:
    from slfaas.faas.service import FunctionService

MAX_TAGS = 50
MAX_KEY_CHARS = 128
MAX_VALUE_CHARS = 256


def validate_tags(tags: Any) -> dict[str, str]:
    if not isinstance(tags, dict):
        raise InvalidParameter("Tags must be a map of string keys to string values")
    for key, value in tags.items():
        validate_tag_key(key)
        if not isinstance(value, str) or len(value) > MAX_VALUE_CHARS:
            raise InvalidParameter(f"Tag value of {key!r} must be a string of at most {MAX_VALUE_CHARS} characters")
    if len(tags) > MAX_TAGS:
        raise InvalidParameter(f"Number of tags exceeds resource tag limit of {MAX_TAGS}.")
    return dict(tags)


def validate_tag_key(key: Any) -> str:
    if not isinstance(key, str) or not 1 <= len(key) <= MAX_KEY_CHARS:
        raise InvalidParameter(f"Tag keys must be strings of 1 to {MAX_KEY_CHARS} characters, got {key!r}")
    if key.lower().startswith("aws:"):
        raise InvalidParameter(f"Tag key {key!r}: keys starting with 'aws:' are reserved for AWS use")
    return key


class Tags:
    def __init__(self, svc: "FunctionService"):
        self.svc = svc
        self.registry = svc.registry

    def _function_for(self, resource: str) -> str:
        arn = parse_lambda_arn(resource)
        if arn.qualifier is not None:
            raise InvalidParameter("Tags on function aliases and versions are not supported. "
                                   "Please specify a function ARN.")
        try:
            self.registry.get_function(arn.name)
        except NotFound:
            raise NotFound(f"Function not found: {function_arn(self.svc.region, arn.name)}")
        return arn.name

    def tag(self, resource: str, tags: Any) -> None:
        name = self._function_for(resource)
        new = validate_tags(tags)
        if len({**self.registry.get_tags(name), **new}) > MAX_TAGS:
            raise InvalidParameter(f"Number of tags exceeds resource tag limit of {MAX_TAGS}.")
        self.registry.put_tags(name, new)

    def untag(self, resource: str, keys: list[str]) -> None:
        name = self._function_for(resource)
        if not keys:
            raise InvalidParameter("TagKeys must name at least one tag key")
        self.registry.remove_tags(name, [validate_tag_key(k) for k in keys])

    def list(self, resource: str) -> dict[str, str]:
        return self.registry.get_tags(self._function_for(resource))
