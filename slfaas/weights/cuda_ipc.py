"""The exported CUDA arena: one IPC handle of the node's backbone arena plus its tensor table,
in a small file the node writes per instance (``CudaArena.export``) and a runtime opens."""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

from slfaas.weights.safetensors import SAFETENSORS_DTYPES


def encode_export(rebuild: Any, args: Any, device: str, tensors: list[tuple]) -> bytes:
    """``tensors``: (name, safetensors dtype, shape, offset, nbytes) into the arena."""
    return pickle.dumps({"rebuild": rebuild, "args": args, "device": device, "tensors": tensors})


def open_exported_arena(path: Path) -> tuple[dict[str, Any], Any]:
    """Instance side: open the node's arena (one IPC handle) and make the tensor views."""
    import torch

    payload = pickle.loads(Path(path).read_bytes())  # written by our own node, 0600
    arena = payload["rebuild"](*payload["args"])
    state = {}
    for name, dtype, shape, offset, nbytes in payload["tensors"]:
        t = arena[offset:offset + nbytes].view(getattr(torch, SAFETENSORS_DTYPES[dtype]))
        state[name] = t.view(shape)
    return state, arena
