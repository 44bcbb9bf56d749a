"""The concurrency API and account settings: Put/Get/DeleteFunctionConcurrency (reserved
concurrency, enforced by ``ConcurrencyTracker`` on every invocation), provisioned concurrency,
and GetAccountSettings with this node's real figures.

A provisioned-concurrency configuration (stored in the registry, so it survives a restart)
makes the node hold that many initialised instances of the version it names or its alias
points at (``NodeApi.provision``, the configurations of one version summed). ``sync`` tells the
node what the registry says after every change (and at start); the status is IN_PROGRESS until
the node holds them all, then READY; FAILED while their starts keep failing.
"""
from __future__ import annotations

import logging
import shutil
import threading
import time
from typing import TYPE_CHECKING, Any

from slfaas.errors import InvalidParameter, NotFound, ProvisionedConcurrencyConfigNotFound
from slfaas.faas.aliases import LATEST
from slfaas.faas.code import MAX_UNZIPPED_BYTES
from slfaas.faas.concurrency import ConcurrencyTracker
from slfaas.faas.registry_settings import ProvisionedConfig
from slfaas.faas.versions import paginate
from slfaas.gpu_node.types import FunctionSpec, ProvisionedInfo

if TYPE_CHECKING:
    from slfaas.faas.service import FunctionService

log = logging.getLogger(__name__)

CODE_SIZE_ZIPPED = 384 << 20       # a 512 MiB request body holds a base64 zip of this size
MAX_PROVISIONED_LIST_ITEMS = 50
FAILED_AFTER = 3   # consecutive failed instance inits before a configuration reports FAILED


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
        self._sync_lock = threading.Lock()
        self._held: dict[tuple[str, str], FunctionSpec] = {}   # what the node was told to hold

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
        self.sync()

    # provisioned concurrency
    def _target(self, ref: str, qualifier: str | None) -> tuple[str, str, Any]:
        latest = self.svc.versions.latest(ref)
        if not qualifier:
            raise InvalidParameter("Qualifier is required: a published version number or an alias name")
        if qualifier == LATEST:
            raise InvalidParameter("Provisioned Concurrency Configs cannot be applied to unpublished function "
                                   "versions.")
        target = self.svc.versions.resolve(latest.name, qualifier)
        if target.record.version == LATEST:
            raise InvalidParameter("Provisioned Concurrency Configs cannot be applied to unpublished function "
                                   "versions.")
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
        self.sync()
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
        self.sync()

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

    def sync(self) -> None:
        """Tell the node what to hold: per version, the sum of the configurations that name it
        or an alias pointing at it; versions no longer named are released."""
        with self._sync_lock:
            wanted: dict[tuple[str, str], tuple[FunctionSpec, int]] = {}
            for cfg in self.registry.list_provisioned():
                try:
                    rec = self.svc.versions.resolve(cfg.function_name, cfg.qualifier).record
                except NotFound:
                    continue   # its version or alias went; the configuration goes with it
                if rec.version == LATEST:
                    continue
                spec, count = wanted.get((rec.name, rec.version), (self.svc.spec(rec), 0))
                wanted[(rec.name, rec.version)] = (spec, count + cfg.requested)
            for key, spec in list(self._held.items()):
                if key not in wanted or wanted[key][0].revision_id != spec.revision_id:
                    self._tell(spec, 0)
                    del self._held[key]
            for key, (spec, count) in wanted.items():
                self._tell(spec, count)
                self._held[key] = spec

    def _tell(self, spec: FunctionSpec, count: int) -> None:
        try:
            self.svc.node.provision(spec, count)
        except Exception:   # the registry holds the configuration; the next sync tries again
            log.exception("provisioning %s:%s (%d) on the node failed", spec.name, spec.version, count)

    def report(self, cfg: ProvisionedConfig) -> dict:
        """AWS's shape. Allocated/Available: the node's initialised instances of the version,
        up to this configuration's request (configurations of one version share them)."""
        info = self._node_target(cfg)
        ready = min(info.ready, cfg.requested) if info is not None else 0
        out = {
            "RequestedProvisionedConcurrentExecutions": cfg.requested,
            "AllocatedProvisionedConcurrentExecutions": ready,
            "AvailableProvisionedConcurrentExecutions": ready,
            "Status": "IN_PROGRESS",
            "LastModified": cfg.last_modified,
        }
        if info is not None and info.ready >= info.requested:
            out["Status"] = "READY"
        elif info is not None and info.failure:
            if info.failures >= FAILED_AFTER:
                out["Status"] = "FAILED"
            out["StatusReason"] = f"{info.ready} of {info.requested} instance(s) ready; retrying: {info.failure}"
        return out

    def _node_target(self, cfg: ProvisionedConfig) -> ProvisionedInfo | None:
        try:
            version = self.svc.versions.resolve(cfg.function_name, cfg.qualifier).record
        except NotFound:
            return None
        return next((p for p in self.svc.node.describe().provisioned if p.function_name == cfg.function_name
                     and p.version == version.version and p.revision_id == version.revision_id), None)

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
