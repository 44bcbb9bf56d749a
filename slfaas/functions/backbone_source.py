"""Where an instance's backbone comes from, as the node told it (environment), and the model
built from it.

Shared (the default): the node's backbone borrowed zero-copy, read-only. Private (a node run
as a baseline without sharing, ``SLFAAS_BACKBONE_PRIVATE``): the instance holds its own copy,
either loaded from the checkpoint with transformers' ``from_pretrained`` (``checkpoint``) or
copied from the node's sealed host-memory image into its own device memory (``copy``, a
host-memory checkpoint cache)."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slfaas.runtime_contract import (ENV_BACKBONE_FD, ENV_BACKBONE_IPC, ENV_BACKBONE_PATH, ENV_BACKBONE_PRIVATE,
                                     ENV_BACKBONE_TABLE_FD, ENV_BACKBONE_VMM_FD, ENV_DEVICE, PRIVATE_BACKBONES,
                                     PRIVATE_CHECKPOINT, PRIVATE_COPY)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BackboneSource:
    """CPU: a sealed memfd inherited as ``fd`` (process sandbox) or a ``path`` (a container:
    see ``open_image_path``); CUDA: ``vmm_fd`` and ``table_fd``, the node's arena as a CUDA
    VMM descriptor mapped read-only plus its tensor table (a container receives both on its
    ``path`` socket: ``receive_backbone``), or (legacy) ``ipc_file``, holding
    one CUDA IPC handle of the arena plus the table. ``private``: ``checkpoint`` (nothing
    borrowed: the base model directory's weights) or ``copy`` (the host image, copied)."""

    device: str = "cpu"
    fd: int | None = None
    path: str | None = None
    ipc_file: str | None = None
    vmm_fd: int | None = None
    table_fd: int | None = None
    private: str | None = None

    def __post_init__(self) -> None:
        if self.private is not None and self.private not in PRIVATE_BACKBONES:
            raise ValueError(f"{ENV_BACKBONE_PRIVATE} must be one of {', '.join(PRIVATE_BACKBONES)}, "
                             f"got {self.private!r}")

    @classmethod
    def from_env(cls, env: "os._Environ[str] | dict[str, str]" = os.environ) -> "BackboneSource":
        def number(name: str) -> int | None:
            value = env.get(name)
            return int(value) if value else None
        return cls(device=env.get(ENV_DEVICE, "cpu"), fd=number(ENV_BACKBONE_FD),
                   path=env.get(ENV_BACKBONE_PATH) or None, ipc_file=env.get(ENV_BACKBONE_IPC) or None,
                   vmm_fd=number(ENV_BACKBONE_VMM_FD), table_fd=number(ENV_BACKBONE_TABLE_FD),
                   private=env.get(ENV_BACKBONE_PRIVATE) or None)

    def tensors(self) -> tuple[dict[str, Any], Any]:
        """(name → tensor viewing the shared backbone, object that must outlive them)."""
        if self.vmm_fd is not None and self.table_fd is not None:
            from slfaas.weights.cuda_vmm import open_vmm_backbone
            return open_vmm_backbone(self.vmm_fd, self.table_fd, self.device)
        if self.ipc_file:
            from slfaas.weights.cuda_ipc import open_exported_arena
            return open_exported_arena(Path(self.ipc_file))
        from slfaas.weights.image import HANDOUT_VMM, iter_tensors, map_image, open_image_path, receive_backbone
        if self.path and self.device.startswith("cuda") and self.private is None:
            kind, fds = receive_backbone(self.path)   # a container's socket: the arena's descriptors
            if kind == HANDOUT_VMM:
                from slfaas.weights.cuda_vmm import open_vmm_backbone
                return open_vmm_backbone(fds[0], fds[1], self.device)
            fd = fds[0]   # a host-memory image (a node whose backbone is not on this GPU)
            try:
                mapping = map_image(fd)
            finally:
                os.close(fd)
            return dict(iter_tensors(mapping)), mapping
        if self.fd is not None:
            mapping = map_image(self.fd)
        elif self.path:
            fd = open_image_path(self.path)
            try:
                mapping = map_image(fd)
            finally:
                os.close(fd)  # the mapping keeps the pages
        else:
            raise RuntimeError(f"no backbone given: {ENV_BACKBONE_FD}, {ENV_BACKBONE_PATH} or {ENV_BACKBONE_IPC} "
                               f"must be set")
        return dict(iter_tensors(mapping)), mapping

    def model(self, base_model_dir: Path) -> tuple[Any, Any]:
        """(the base model on this instance's device, object that must outlive it)."""
        if self.private == PRIVATE_CHECKPOINT:
            return load_checkpoint(base_model_dir, self.device), None
        state, keepalive = self.tensors()
        if self.private == PRIVATE_COPY:
            # a private copy in this instance's own memory: the host image is only its source
            state = {k: v.to(self.device, copy=True) for k, v in state.items()}
            keepalive = None
        model = build_borrowed_model(state, base_model_dir)
        return model, keepalive


def load_checkpoint(base_model_dir: Path, device: str) -> Any:
    """The base model loaded the ordinary way, from its own weight files, into this process's
    memory on ``device`` (in the checkpoint's dtype)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base_model_dir), dtype="auto", device_map=device)
    model.eval()
    model.requires_grad_(False)
    return model


def build_borrowed_model(state: dict[str, Any], base_model_dir: Path) -> Any:
    """Skeleton on ``meta``, then every parameter assigned a view of the shared backbone
    (``assign=True``: the views become the parameters, nothing is copied)."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(base_model_dir))
    with init_empty_weights(include_buffers=False):  # buffers (rotary tables) stay real
        model = AutoModelForCausalLM.from_config(config)
    _missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    model.tie_weights()
    still_meta = [n for n, p in model.named_parameters() if p.is_meta]
    if still_meta:
        raise RuntimeError(f"backbone image lacks parameters: {still_meta[:5]}")
    if unexpected:
        log.warning("backbone image has tensors the model does not use: %s", unexpected[:5])
    model.eval()
    model.requires_grad_(False)
    return model
