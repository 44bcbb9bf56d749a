"""The concurrency API and account settings: Put/Get/DeleteFunctionConcurrency (reserved
concurrency, enforced by ``ConcurrencyTracker`` on every invocation), the provisioned
concurrency configurations, and GetAccountSettings with this node's real figures.

Provisioned concurrency is stored and reported; keeping that many instances of the version
pre-started is the warm pool's job (a later issue). Until then the report says so: READY,
with Allocated/Available counting the version's instances that are live on the node now.
"""
from __future__ import annotations

import shutil
import time
from typing import TYPE_CHECKING, Any

from slfaas.errors import InvalidParameter, NotFound, ProvisionedConcurrencyConfigNotFound
from slfaas.faas.aliases import LATEST
from slfaas.faas.code import MAX_UNZIPPED_BYTES
from slfaas.faas.concurrency import ConcurrencyTracker
from slfaas.faas.registry_settings import ProvisionedConfig
from slfaas.faas.versions import paginate

if TYPE_CHECKING:
    from slfaas.faas.service import FunctionService

CODE_SIZE_ZIPPED = 384 << 20       # a 512 MiB request body holds a base64 zip of this size
MAX_PROVISIONED_LIST_ITEMS = 50
PROVISIONED_STATUS_REASON = (
    "slfaas stores this configuration; keeping instances of the version pre-started for it comes with "
    "the warm pool. Allocated and Available count the version's instances live on the node now.")


def _count(params: dict, key: str, low: int) -> int:
    value = params.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidParameter(f"{key} must be an integer, got {value!r}")
    if value < low:
        raise InvalidParameter(
            f"1 validation error detected: Value '{value}' at '{key[0].lower() + key[1:]}' failed to satisfy "
            f"constraint: Member must have value greater than or equal to {low}")
    return value


class Limits:
    def __init__(self, svc: "FunctionService", account_limit: int):
        self.svc = svc
        self.registry = svc.registry
        self.tracker = ConcurrencyTracker(account_limit, self.registry.all_reserved_concurrency())

    # reserved concurrency
    def put_reserved(self, ref: str, params: dict) -> int:
        latest = self.svc.versions.latest(ref)
        reserved = _count(params, "ReservedConcurrentExecutions", 0)
        self.tracker.check_reservation(latest.name, reserved)
        provisioned = sum(c.requested for c in self.registry.list_provisioned(latest.name))
        if provisioned > reserved:
            raise InvalidParameter(
                f"ReservedConcurrentExecutions {reserved} should not be lower than the function's total "
                f"provisioned concurrency ({provisioned})")
        self.registry.put_reserved_concurrency(latest.name, reserved)
        self.tracker.set_reserved(latest.name, reserved)
        return reserved

    def get_reserved(self, ref: str) -> int | None:
        return self.registry.get_reserved_concurrency(self.svc.versions.latest(ref).name)

    def delete_reserved(self, ref: str) -> None:
        name = self.svc.versions.latest(ref).name
        self.registry.delete_reserved_concurrency(name)
        self.tracker.set_reserved(name, None)

    def forget(self, function_name: str) -> None:
        """The function was deleted (its rows went with it)."""
        self.tracker.set_reserved(function_name, None)

    # provisioned concurrency
    def _target(self, ref: str, qualifier: str | None) -> tuple[str, str, Any]:
        latest = self.svc.versions.latest(ref)
        if not qualifier:
            raise InvalidParameter("Qualifier is required: a published version number or an alias name")
        if qualifier == LATEST:
            raise InvalidParameter("Provisioned Concurrency Configs cannot be applied to unpublished function "
                                   "versions.")
        target = self.svc.versions.resolve(latest.name, qualifier)
        return latest.name, qualifier, target

    def put_provisioned(self, ref: str, qualifier: str | None, params: dict) -> dict:
        name, qualifier, target = self._target(ref, qualifier)
        if target.alias is not None and target.alias.routing:
            raise InvalidParameter("Alias with weights can not be used with Provisioned Concurrency")
        requested = _count(params, "ProvisionedConcurrentExecutions", 1)
        reserved = self.tracker.reserved(name)
        others = sum(c.requested for c in self.registry.list_provisioned(name) if c.qualifier != qualifier)
        if reserved is not None and others + requested > reserved:
            raise InvalidParameter(
                f"Requested Provisioned Concurrency should not be greater than the reservedConcurrentExecution "
                f"for function ({reserved})")
        if others + requested > self.tracker.account_limit:
            raise InvalidParameter(
                f"Requested Provisioned Concurrency exceeds the account's concurrency limit "
                f"({self.tracker.account_limit})")
        cfg = ProvisionedConfig(name, qualifier, requested, time.strftime("%Y-%m-%dT%H:%M:%S+0000", time.gmtime()))
        self.registry.put_provisioned(cfg)
        return self.report(cfg)

    def get_provisioned(self, ref: str, qualifier: str | None) -> dict:
        name, qualifier, _target = self._target(ref, qualifier)
        try:
            return self.report(self.registry.get_provisioned(name, qualifier))
        except NotFound:
            raise ProvisionedConcurrencyConfigNotFound("No Provisioned Concurrency Config found for this function")

    def delete_provisioned(self, ref: str, qualifier: str | None) -> None:
        name, qualifier, _target = self._target(ref, qualifier)
        if not self.registry.delete_provisioned(name, qualifier):
            raise ProvisionedConcurrencyConfigNotFound("No Provisioned Concurrency Config found for this function")

    def list_provisioned(self, ref: str, marker: str | None, max_items: int | None) -> tuple[list[dict], str | None]:
        name = self.svc.versions.latest(ref).name
        if max_items is not None and not 1 <= max_items <= MAX_PROVISIONED_LIST_ITEMS:
            raise InvalidParameter(f"MaxItems must be between 1 and {MAX_PROVISIONED_LIST_ITEMS}")
        page, next_marker = paginate(self.registry.list_provisioned(name), lambda c: c.qualifier, marker, max_items)
        out = []
        for cfg in page:
            item = self.report(cfg)
            item["FunctionArn"] = self.svc.versions._arn(name, cfg.qualifier)
            out.append(item)
        return out, next_marker

    def report(self, cfg: ProvisionedConfig) -> dict:
        live = self._live_instances(cfg)
        ready = min(live, cfg.requested)
        return {
            "RequestedProvisionedConcurrentExecutions": cfg.requested,
            "AllocatedProvisionedConcurrentExecutions": ready,
            "AvailableProvisionedConcurrentExecutions": ready,
            "Status": "READY",
            "StatusReason": PROVISIONED_STATUS_REASON,
            "LastModified": cfg.last_modified,
        }

    def _live_instances(self, cfg: ProvisionedConfig) -> int:
        try:
            version = self.svc.versions.resolve(cfg.function_name, cfg.qualifier).record
        except NotFound:
            return 0
        return sum(1 for i in self.svc.node.describe().instances if i.function_name == cfg.function_name
                   and i.revision_id == version.revision_id and i.alive)

    # account
    def account_settings(self) -> dict:
        count, code_bytes = self.registry.account_usage()
        try:
            free = shutil.disk_usage(self.svc.code.root).free
        except OSError:
            free = 0
        return {
            "AccountLimit": {
                "TotalCodeSize": code_bytes + free,       # what the code store's disk can still take
                "CodeSizeUnzipped": MAX_UNZIPPED_BYTES,
                "CodeSizeZipped": CODE_SIZE_ZIPPED,
                "ConcurrentExecutions": self.tracker.account_limit,
                "UnreservedConcurrentExecutions": self.tracker.unreserved_limit(),
            },
            "AccountUsage": {"TotalCodeSize": code_bytes, "FunctionCount": count},
        }
