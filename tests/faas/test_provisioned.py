"""Provisioned concurrency in the control plane, with a fake node: what the node is told to
hold (per version, configurations summed, aliases followed), the status it reports back, and
configurations held again after a restart."""
from __future__ import annotations

from pathlib import Path

import pytest

from slfaas.errors import InvalidParameter
from slfaas.faas.registry import Registry
from slfaas.faas.service import FunctionService
from tests.faas.conftest import FakeNode
from tests.faas.test_versions import _create, _wait_active


def _held(node: FakeNode) -> dict[tuple[str, str], int]:
    return {k: n for k, (_spec, n) in node.provisioned.items()}


def test_configurations_drive_what_the_node_holds(svc, node, zips) -> None:  # type: ignore[no-untyped-def]
    _create(svc, zips)
    v1 = svc.versions.publish("fn", {})
    _wait_active(svc, "fn", "1")
    svc.versions.create_alias("fn", {"Name": "live", "FunctionVersion": "1"})
    node.provisioned_ready = 0
    out = svc.limits.put_provisioned("fn", "live", {"ProvisionedConcurrentExecutions": 2})
    assert out["Status"] == "IN_PROGRESS" and out["AllocatedProvisionedConcurrentExecutions"] == 0
    spec, count = node.provisioned[("fn", "1")]
    assert count == 2 and spec.revision_id == v1.revision_id and spec.version == "1"
    node.provisioned_ready = 1
    assert svc.limits.get_provisioned("fn", "live")["Status"] == "IN_PROGRESS"
    node.provisioned_ready = None
    got = svc.limits.get_provisioned("fn", "live")
    assert got["Status"] == "READY" and got["AvailableProvisionedConcurrentExecutions"] == 2
    # a second configuration of the same version adds to it
    svc.limits.put_provisioned("fn", "1", {"ProvisionedConcurrentExecutions": 1})
    assert _held(node) == {("fn", "1"): 3}
    # the alias moves to version 2: its share follows it
    svc.update_configuration("fn", {"Timeout": 30})
    _wait_active(svc, "fn")
    svc.versions.publish("fn", {})
    _wait_active(svc, "fn", "2")
    svc.versions.update_alias("fn", "live", {"FunctionVersion": "2"})
    assert _held(node) == {("fn", "1"): 1, ("fn", "2"): 2}
    svc.limits.delete_provisioned("fn", "1")
    assert _held(node) == {("fn", "2"): 2}
    svc.versions.delete_alias("fn", "live")
    assert _held(node) == {}


def test_failures_show_in_the_status(svc, node, zips) -> None:  # type: ignore[no-untyped-def]
    _create(svc, zips)
    svc.versions.publish("fn", {})
    _wait_active(svc, "fn", "1")
    node.provisioned_ready = 0
    node.provision_failure = ("no room on the node", 0)
    out = svc.limits.put_provisioned("fn", "1", {"ProvisionedConcurrentExecutions": 1})
    assert out["Status"] == "IN_PROGRESS" and "no room on the node" in out["StatusReason"]
    node.provision_failure = ("an instance failed its init: boom", 3)
    out = svc.limits.get_provisioned("fn", "1")
    assert out["Status"] == "FAILED" and "boom" in out["StatusReason"]


def test_unpublished_targets_are_refused(svc, zips) -> None:  # type: ignore[no-untyped-def]
    _create(svc, zips)
    svc.versions.create_alias("fn", {"Name": "head", "FunctionVersion": "$LATEST"})
    with pytest.raises(InvalidParameter):
        svc.limits.put_provisioned("fn", "head", {"ProvisionedConcurrentExecutions": 1})


def test_deleting_the_function_releases_and_a_restart_provisions_again(  # type: ignore[no-untyped-def]
        tmp_path: Path, svc, node, zips) -> None:
    _create(svc, zips)
    svc.versions.publish("fn", {})
    _wait_active(svc, "fn", "1")
    svc.limits.put_provisioned("fn", "1", {"ProvisionedConcurrentExecutions": 2})
    # a new server on the same registry: the node is fresh, the configuration is not
    fresh = FakeNode(tmp_path / "logs2")
    registry = Registry(svc.registry.database_url)
    again = FunctionService(registry, fresh, tmp_path / "code")  # type: ignore[arg-type]
    try:
        assert _held(fresh) == {("fn", "1"): 2}
        assert again.limits.get_provisioned("fn", "1")["Status"] == "READY"
        again.delete_function("fn")
        assert _held(fresh) == {}
    finally:
        again.events.queue.close()
        registry.close()
