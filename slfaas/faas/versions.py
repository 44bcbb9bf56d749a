"""Published versions, aliases and qualifiers: PublishVersion, ListVersionsByFunction, the
alias operations, and what ``Qualifier`` names on Get/Invoke/Delete.

A version is an immutable snapshot of $LATEST (code digest + configuration) with a revision id
of its own, so the node gives it its own instances and it keeps serving its own adapter after
$LATEST changes. An alias names a version, optionally with a weighted second one.
"""
from __future__ import annotations

import base64
import binascii
import re
import time
import uuid
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from slfaas.errors import Conflict, InvalidParameter, NotFound, PreconditionFailed
from slfaas.faas.aliases import (LATEST, AliasRouter, check_routing, is_version, parse_routing_config,
                                 validate_alias_name, validate_version_ref)
from slfaas.faas.naming import function_arn, parse_function_ref
from slfaas.faas.registry import FunctionRecord
from slfaas.faas.registry_versions import AliasRecord

if TYPE_CHECKING:
    from slfaas.faas.service import FunctionService

QUALIFIER_RE = re.compile(r"^(\$LATEST|[a-zA-Z0-9-_]{1,128})$")
_SNAPSHOT_FIELDS = ("code_sha256_hex", "runtime", "role", "handler", "timeout_s", "memory_mb", "environment",
                    "base_model_path")
MAX_DESCRIPTION = 256


@dataclass(frozen=True)
class Target:
    """What a (function, qualifier) pair names: the version record, and the alias if any."""

    record: FunctionRecord
    qualifier: str | None = None
    alias: AliasRecord | None = None


def same_snapshot(a: FunctionRecord, b: FunctionRecord) -> bool:
    """Would publishing ``b`` give the same version as ``a``? (AWS then publishes nothing.)"""
    return all(getattr(a, f) == getattr(b, f) for f in _SNAPSHOT_FIELDS)


def precondition_failed() -> PreconditionFailed:
    return PreconditionFailed("The Revision Id provided does not match the latest Revision Id. "
                              "Call the GetFunction/GetAlias API to retrieve the latest Revision Id")


def _description(params: dict, default: str) -> str:
    value = params.get("Description", default)
    if value is None:
        return default
    if not isinstance(value, str) or len(value) > MAX_DESCRIPTION:
        raise InvalidParameter(f"Description must be a string of at most {MAX_DESCRIPTION} characters")
    return value


def paginate(items: list, key: Any, marker: str | None, max_items: int | None) -> tuple[list, str | None]:
    """Marker/MaxItems paging over an ordered list; the marker names the last item returned."""
    limit = 50 if max_items is None else max_items
    if not 1 <= limit <= 10000:
        raise InvalidParameter("MaxItems must be between 1 and 10000")
    start = 0
    if marker:
        try:
            after = base64.urlsafe_b64decode(marker.encode()).decode()
        except (binascii.Error, UnicodeDecodeError, ValueError):
            raise InvalidParameter(f"Invalid Marker: {marker}")
        keys = [key(i) for i in items]
        if after not in keys:
            raise InvalidParameter(f"Invalid Marker: {marker}")
        start = keys.index(after) + 1
    page = items[start:start + limit]
    more = start + limit < len(items)
    return page, (base64.urlsafe_b64encode(key(page[-1]).encode()).decode() if more and page else None)


class Versions:
    def __init__(self, svc: "FunctionService", router: AliasRouter | None = None):
        self.svc = svc
        self.registry = svc.registry
        self.router = router or AliasRouter()

    def _arn(self, name: str, qualifier: str | None = None) -> str:
        return function_arn(self.svc.region, name, qualifier)

    # resolution
    def resolve(self, ref: str, qualifier: str | None = None) -> Target:
        if qualifier is not None and not QUALIFIER_RE.match(qualifier):
            raise InvalidParameter(
                f"1 validation error detected: Value '{qualifier}' at 'qualifier' failed to satisfy constraint: "
                f"Member must satisfy regular expression pattern: (|[a-zA-Z0-9$_-]+)")
        fn = parse_function_ref(ref, qualifier)
        q = fn.qualifier
        try:
            if q is None or q == LATEST:
                return Target(self.registry.get_function(fn.name), q)
            if is_version(q):
                return Target(self.registry.get_function(fn.name, q), q)
            alias = self.registry.get_alias(fn.name, q)
            return Target(self.registry.get_function(fn.name, alias.function_version), q, alias)
        except NotFound:
            raise NotFound(f"Function not found: {self._arn(fn.name, q)}")

    def latest(self, ref: str) -> FunctionRecord:
        """$LATEST of ``ref``: the only version an update may change."""
        fn = parse_function_ref(ref)
        if fn.qualifier not in (None, LATEST):
            raise InvalidParameter(f"Cannot update {self._arn(fn.name, fn.qualifier)}: published versions and "
                                   f"aliases are immutable snapshots; update $LATEST and publish a new version")
        try:
            return self.registry.get_function(fn.name)
        except NotFound:
            raise NotFound(f"Function not found: {self._arn(fn.name)}")

    def choose(self, target: Target) -> FunctionRecord:
        """The version one invocation of ``target`` runs (an alias's routing draws it)."""
        alias = target.alias
        if alias is None or not alias.routing:
            return target.record
        version = self.router.choose(alias.function_version, alias.routing)
        if version == target.record.version:
            return target.record
        try:
            return self.registry.get_function(target.record.name, version)
        except NotFound:
            raise NotFound(f"Function not found: {self._arn(target.record.name, version)}")

    # versions
    def publish(self, ref: str, params: dict) -> FunctionRecord:
        latest = self.latest(ref)
        expected = params.get("RevisionId")
        if expected is not None and expected != latest.revision_id:
            raise precondition_failed()
        sha = params.get("CodeSha256")
        current_sha = base64.b64encode(bytes.fromhex(latest.code_sha256_hex)).decode()
        if sha is not None and sha != current_sha:
            raise InvalidParameter(f"CodeSHA256 ({sha}) is different from current CodeSHA256 in $LATEST "
                                   f"({current_sha}). Please try again with the CodeSHA256 in $LATEST.")
        if latest.last_update_status == "InProgress" or latest.state == "Pending":
            raise Conflict(f"The operation cannot be performed at this time. An update is in progress for "
                           f"resource: {self._arn(latest.name)}")
        if latest.state == "Failed":
            raise Conflict(f"The operation cannot be performed at this time. The function is currently in the "
                           f"following state: {latest.state}")
        description = _description(params, latest.description)
        published = [r for r in self.registry.list_versions(latest.name) if r.version != LATEST]
        if published and same_snapshot(published[-1], latest):
            return published[-1]
        return self.snapshot(latest, description)

    def snapshot(self, latest: FunctionRecord, description: str | None = None) -> FunctionRecord:
        """Store $LATEST as the next version and let it turn Active like a new function."""
        number = self.registry.next_version_number(latest.name)
        rec = replace(latest, version=str(number), revision_id=str(uuid.uuid4()),
                      description=latest.description if description is None else description,
                      state="Pending", state_reason="The function is being created.", state_reason_code="Creating",
                      last_update_status="InProgress", last_update_status_reason="The function is being created.",
                      last_modified=time.strftime("%Y-%m-%dT%H:%M:%S.000+0000", time.gmtime()),
                      created_ts=time.time())
        self.registry.insert_function(rec)
        self.svc._activate_async(rec)
        return rec

    def list_versions(self, ref: str, marker: str | None, max_items: int | None
                      ) -> tuple[list[FunctionRecord], str | None]:
        latest = self.latest(ref)
        return paginate(self.registry.list_versions(latest.name), lambda r: r.version, marker, max_items)

    def delete_version(self, name: str, version: str) -> None:
        if version == LATEST:
            raise InvalidParameter("$LATEST version cannot be deleted without deleting the function.")
        if not is_version(version):
            raise InvalidParameter(f"Deletion of aliases is not supported through DeleteFunction: use DeleteAlias "
                                   f"for {self._arn(name, version)}")
        try:
            code = self.registry.get_function(name, version).code_sha256_hex
        except NotFound:
            raise NotFound(f"Function not found: {self._arn(name, version)}")
        users = self.registry.list_aliases(name, version)
        if users:
            raise Conflict(f"Unable to delete version because the following aliases reference it: "
                           f"[{', '.join(a.name for a in users)}]")
        self.registry.delete_version(name, version)
        self.registry.delete_provisioned(name, version)
        self.svc.node.retire(name, keep_revision=None, version=version)
        self.svc.limits.sync()
        self.svc.code.collect(code)

    # aliases
    def _check_targets(self, name: str, primary: str, routing: dict[str, float]) -> None:
        check_routing(primary, routing)
        for version in (primary, *routing):
            if version == LATEST:
                continue
            try:
                self.registry.get_function(name, version)
            except NotFound:
                raise NotFound(f"Function not found: {self._arn(name, version)}")

    def create_alias(self, ref: str, params: dict) -> AliasRecord:
        latest = self.latest(ref)
        name = validate_alias_name(params.get("Name"))
        primary = validate_version_ref(params.get("FunctionVersion"))
        routing = parse_routing_config(params.get("RoutingConfig"))
        self._check_targets(latest.name, primary, routing)
        rec = AliasRecord(function_name=latest.name, name=name, function_version=primary,
                          description=_description(params, ""), revision_id=str(uuid.uuid4()),
                          created_ts=time.time(), routing=routing)
        try:
            self.registry.insert_alias(rec)
        except Conflict:
            raise Conflict(f"Alias already exists: {self._arn(latest.name, name)}")
        return rec

    def get_alias(self, ref: str, name: str) -> AliasRecord:
        latest = self.latest(ref)
        validate_alias_name(name)
        try:
            return self.registry.get_alias(latest.name, name)
        except NotFound:
            raise NotFound(f"Cannot find alias arn: {self._arn(latest.name, name)}")

    def update_alias(self, ref: str, name: str, params: dict) -> AliasRecord:
        current = self.get_alias(ref, name)
        expected = params.get("RevisionId")
        if expected is not None and expected != current.revision_id:
            raise precondition_failed()
        changes: dict[str, Any] = {"revision_id": str(uuid.uuid4())}
        primary = current.function_version
        if params.get("FunctionVersion") is not None:
            primary = changes["function_version"] = validate_version_ref(params["FunctionVersion"])
        routing = current.routing
        if "RoutingConfig" in params:
            routing = changes["routing"] = parse_routing_config(params["RoutingConfig"])
        if "Description" in params:
            changes["description"] = _description(params, current.description)
        self._check_targets(current.function_name, primary, routing)
        if routing and any(c.qualifier == name for c in self.registry.list_provisioned(current.function_name)):
            raise InvalidParameter("Alias with weights can not be used with Provisioned Concurrency")
        try:
            updated = self.registry.update_alias(current.function_name, name, current.revision_id, **changes)
        except Conflict:
            raise precondition_failed()
        self.svc.limits.sync()   # its provisioned instances follow it to its new version
        return updated

    def delete_alias(self, ref: str, name: str) -> None:
        latest = self.latest(ref)
        validate_alias_name(name)
        self.registry.delete_alias(latest.name, name)
        if self.registry.delete_provisioned(latest.name, name):
            self.svc.limits.sync()

    def list_aliases(self, ref: str, function_version: str | None, marker: str | None, max_items: int | None
                     ) -> tuple[list[AliasRecord], str | None]:
        latest = self.latest(ref)
        if function_version is not None:
            validate_version_ref(function_version)
        return paginate(self.registry.list_aliases(latest.name, function_version), lambda a: a.name, marker, max_items)

    def alias_configuration(self, alias: AliasRecord) -> dict:
        """The AliasConfiguration shape of botocore's Lambda model."""
        out: dict[str, Any] = {
            "AliasArn": self._arn(alias.function_name, alias.name),
            "Name": alias.name,
            "FunctionVersion": alias.function_version,
            "Description": alias.description,
            "RevisionId": alias.revision_id,
        }
        if alias.routing:
            out["RoutingConfig"] = {"AdditionalVersionWeights": dict(alias.routing)}
        return out
