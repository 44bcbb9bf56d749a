"""The environment a runtime starts with: the node's filtered variables, the function's own,
and the contract's (socket, code, base model, device), in that order of precedence."""
from __future__ import annotations

import os
from pathlib import Path

import slfaas
from slfaas.gpu_node.types import FunctionSpec
from slfaas import runtime_contract as rc

PACKAGE_ROOT = str(Path(slfaas.__file__).resolve().parent.parent)
# What a runtime inherits from the node's environment; everything else is the function's own.
_PASS_ENV = frozenset({"PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "LD_LIBRARY_PATH", "VIRTUAL_ENV",
                       rc.ENV_RUNTIME_CPU_THREADS, rc.ENV_GPU_TRIM_IDLE_S, rc.ENV_PREWARM_KEEP_SCRATCH,
                       rc.ENV_CUDNN_SDPA})
_PASS_ENV_PREFIXES = ("CUDA_", "NVIDIA_", "NCCL_", "NVSHMEM_", "TORCH_", "PYTORCH_", "OMP_", "MKL_")


def node_environ() -> dict[str, str]:
    """What a runtime inherits from the node's environment (a warm-pool process starts with
    just this and ``runtime_fixed_env``: no function is known yet)."""
    return {k: v for k, v in os.environ.items() if k in _PASS_ENV or k.startswith(_PASS_ENV_PREFIXES)}


def runtime_fixed_env() -> dict[str, str]:
    """Set for every runtime, over the function's own environment."""
    pythonpath = os.environ.get("PYTHONPATH")
    return {"PYTHONPATH": PACKAGE_ROOT + (os.pathsep + pythonpath if pythonpath else ""),
            "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false"}


def device_bound_mb(function: FunctionSpec, instance_mb: int, shared_mb: int) -> int | None:
    """The bound a runtime of ``function`` gets: the node's --instance-gpu-mb (what its placement
    counts per instance) for a function's own, --shared-runtime-gpu-mb for the platform's shared
    runtime (it batches many functions' requests: 0, no bound beyond the device's free memory)."""
    mb = shared_mb if function.is_shared_runtime else instance_mb
    return mb if mb > 0 else None


def runtime_env(function: FunctionSpec, instance_id: str, socket_path: Path, device: str,
                instance_device_mb: int | None = None) -> dict[str, str]:
    """``instance_device_mb``: the device memory a GPU runtime may hold beside its backbone
    (``device_bound_mb``; a batching runtime's allocator is held to it)."""
    env = node_environ()
    env.update(function.environment)
    env.update(runtime_fixed_env())
    env.update({
        rc.ENV_FUNCTION_NAME: function.name,
        rc.ENV_FUNCTION_VERSION: function.version,
        rc.ENV_FUNCTION_MEMORY_MB: str(function.memory_mb),
        rc.ENV_HANDLER: function.handler,
        rc.ENV_RUNTIME_SOCKET: str(socket_path),
        rc.ENV_INSTANCE_ID: instance_id,
        rc.ENV_BASE_MODEL_DIR: str(function.base_model_path),
        rc.ENV_CODE_DIR: str(function.code_dir),
        rc.ENV_DEVICE: device,
        rc.ENV_NODE_PID: str(os.getpid()),
        rc.ENV_MAX_BATCH_SIZE: str(max(1, function.max_batch_size)),
        rc.ENV_SHARED_EXECUTION: "1" if function.is_shared_runtime else "0",
    })
    env.pop(rc.ENV_INSTANCE_DEVICE_MB, None)   # the node's to set, never a function's
    if instance_device_mb and device.startswith("cuda"):
        env[rc.ENV_INSTANCE_DEVICE_MB] = str(int(instance_device_mb))
    return env
