"""Backbone modes of a node run as a baseline without sharing: what the node loads (nothing, or
a host-memory image), what each instance is started with, what admission expects an instance
to hold, and which model files an isolated instance sees."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from slfaas import runtime_contract as rc
from slfaas.errors import NodeError
from slfaas.gpu_node.resources import private_backbone as pb
from slfaas.gpu_node.resources.backbone import BackboneOwner
from slfaas.gpu_node.resources.memory import MemoryLedger
from slfaas.gpu_node.sandboxes import bwrap


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from slfaas.testing.tinymodels import make_base_model

    return make_base_model(tmp_path_factory.mktemp("pb") / "base")


def _weights_bytes(base: Path) -> int:
    return (base / "model.safetensors").stat().st_size


def test_modes_are_checked_and_the_host_cache_lives_in_host_memory() -> None:
    assert pb.check_mode("private-checkpoint") == "private-checkpoint"
    with pytest.raises(ValueError, match="--backbone must be one of shared, private-checkpoint, private-host-cache"):
        pb.check_mode("private")
    assert pb.owner_device(pb.SHARED, "cuda:0") == "cuda:0"
    assert pb.owner_device(pb.PRIVATE_CHECKPOINT, "cuda:0") == "cuda:0"
    assert pb.owner_device(pb.PRIVATE_HOST_CACHE, "cuda:0") == "cpu"


def test_checkpoint_mode_loads_nothing_and_counts_a_backbone_per_instance(base: Path, tmp_path: Path) -> None:
    owner = BackboneOwner("cpu")
    ledger = MemoryLedger(1536, free_mb=lambda: 80_000.0)
    info = pb.prepare(pb.PRIVATE_CHECKPOINT, owner, ledger, base)
    assert owner.loaded() == [] and info.device == "private"
    assert 0 < info.size_bytes <= _weights_bytes(base) and info.tensor_count > 0
    assert ledger.instance_estimate_mb() == pytest.approx(1536 + info.size_bytes / 2**20)
    ledger.record("i1", 1000.0)   # a measure (NVML: the process, its backbone included) below the bound counts
    assert ledger.instance_estimate_mb() == 1000.0
    att = pb.attachment(pb.PRIVATE_CHECKPOINT, owner, base, tmp_path, "i1")
    assert att.env == {rc.ENV_BACKBONE_PRIVATE: rc.PRIVATE_CHECKPOINT} and att.inherit_fds == ()
    with pytest.raises(NodeError, match="cannot be read"):
        pb.prepare(pb.PRIVATE_CHECKPOINT, owner, ledger, tmp_path)


def test_host_cache_mode_hands_the_image_over_to_be_copied(base: Path, tmp_path: Path) -> None:
    owner = BackboneOwner("cpu")
    ledger = MemoryLedger(1536)
    try:
        info = pb.prepare(pb.PRIVATE_HOST_CACHE, owner, ledger, base)
        assert [b.model_path for b in owner.loaded()] == [str(base.resolve())]
        assert ledger.bound_mb == pytest.approx(1536 + info.size_bytes / 2**20)
        att = pb.attachment(pb.PRIVATE_HOST_CACHE, owner, base, tmp_path, "i1")
        assert att.env[rc.ENV_BACKBONE_PRIVATE] == rc.PRIVATE_COPY and rc.ENV_BACKBONE_FD in att.env
        shared = pb.attachment(pb.SHARED, owner, base, tmp_path, "i2")
        assert rc.ENV_BACKBONE_PRIVATE not in shared.env
    finally:
        owner.close()


def test_shared_mode_adds_nothing_to_an_instances_estimate(base: Path) -> None:
    owner = BackboneOwner("cpu")
    ledger = MemoryLedger(1536)
    try:
        pb.prepare(pb.SHARED, owner, ledger, base)
        assert ledger.bound_mb == 1536 and ledger.instance_estimate_mb() == 1536
    finally:
        owner.close()


def test_only_an_instance_that_loads_its_own_backbone_sees_the_weights(base: Path, tmp_path: Path) -> None:
    env = {rc.ENV_BASE_MODEL_DIR: str(base)}
    shown = bwrap.instance_binds(tmp_path, tmp_path / "s.sock", env)
    assert f"{bwrap.MODEL_DIR}/config.json" in shown and f"{bwrap.MODEL_DIR}/model.safetensors" not in shown
    os.chmod(base / "model.safetensors", 0o600)
    private = {**env, rc.ENV_BACKBONE_PRIVATE: rc.PRIVATE_CHECKPOINT}
    with pytest.raises(PermissionError, match="model.safetensors is not world-readable"):
        bwrap.instance_binds(tmp_path, tmp_path / "s.sock", private)
    os.chmod(base / "model.safetensors", 0o644)
    assert f"{bwrap.MODEL_DIR}/model.safetensors" in bwrap.instance_binds(tmp_path, tmp_path / "s.sock", private)
    copied = {**env, rc.ENV_BACKBONE_PRIVATE: rc.PRIVATE_COPY}   # it reads the node's image, not the files
    assert f"{bwrap.MODEL_DIR}/model.safetensors" not in bwrap.instance_binds(tmp_path, tmp_path / "s.sock", copied)
