"""Backbone modes of a node. ``shared`` is slfaas: one backbone per node, borrowed read-only by
every instance. The other two run the same node as a baseline without sharing, so that a
benchmark compares the same code under both policies:

- ``private-checkpoint``: every instance loads its own backbone from the checkpoint with
  transformers' ``from_pretrained`` (the node loads nothing; the sandbox sees the weight files);
- ``private-host-cache``: the node keeps the checkpoint in host memory once (its sealed CPU
  image, as a host-memory checkpoint cache would) and every instance copies it into its own
  device memory.

In both, an instance holds a whole backbone: device-memory admission counts one per instance.
"""
from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from slfaas import runtime_contract as rc
from slfaas.errors import NodeError
from slfaas.gpu_node.resources.backbone import Attachment, BackboneOwner
from slfaas.gpu_node.resources.memory import MemoryLedger
from slfaas.gpu_node.types import BackboneInfo
from slfaas.weights.safetensors import WeightsFormatError, checkpoint_tensors

SHARED = "shared"
PRIVATE_CHECKPOINT = "private-checkpoint"
PRIVATE_HOST_CACHE = "private-host-cache"
BACKBONE_MODES = (SHARED, PRIVATE_CHECKPOINT, PRIVATE_HOST_CACHE)


def check_mode(mode: str) -> str:
    if mode not in BACKBONE_MODES:
        raise ValueError(f"--backbone must be one of {', '.join(BACKBONE_MODES)}, got {mode!r}")
    return mode


def owner_device(mode: str, device: str) -> str:
    """Where the node keeps its backbones: on the device, or (host cache) in host memory."""
    return "cpu" if mode == PRIVATE_HOST_CACHE else device


def checkpoint_info(model_dir: Path) -> BackboneInfo:
    """What an instance will load in ``private-checkpoint`` mode, read from the safetensors
    headers alone (the node loads nothing)."""
    key = Path(model_dir).resolve()
    try:
        tensors = checkpoint_tensors(key)
    except (WeightsFormatError, OSError) as exc:
        raise NodeError(f"backbone {key} cannot be read: {exc}") from None
    return BackboneInfo(str(key), "private", sum(t.nbytes for t in tensors), len(tensors), 0.0, 0.0, time.time())


def prepare(mode: str, backbones: BackboneOwner, ledger: MemoryLedger, model_dir: Path) -> BackboneInfo:
    """Make ``model_dir`` ready for instances; in a private mode, each instance's device
    memory estimate includes a whole backbone from now on."""
    if mode == PRIVATE_CHECKPOINT:
        info = checkpoint_info(model_dir)
    else:
        backbones.acquire(model_dir)
        info = backbones.info(model_dir)
    if mode != SHARED:
        ledger.add_private_backbone(info.size_bytes)
    return info


def attachment(mode: str, backbones: BackboneOwner, model_dir: Path, scratch_dir: Path,
               instance_id: str) -> Attachment:
    """What an instance is started with to get its backbone."""
    if mode == PRIVATE_CHECKPOINT:
        return Attachment({rc.ENV_BACKBONE_PRIVATE: rc.PRIVATE_CHECKPOINT})
    attached = backbones.acquire(model_dir).attach(scratch_dir, instance_id)
    if mode == PRIVATE_HOST_CACHE:
        return replace(attached, env={**attached.env, rc.ENV_BACKBONE_PRIVATE: rc.PRIVATE_COPY})
    return attached
