"""The platform's shared runtime of a backbone: the one stated exception to one runtime per
function. Functions that opt into shared execution (``SLFAAS_SHARED_EXECUTION=1``) run in a
runtime the platform owns, one per (backbone, device), which holds several functions'
adapters and batches their requests in the same forward passes (per-row adapters). It runs
only the built-in handler (no function's code), sees no function's code directory (an
adapter is fetched over its Runtime API, and only an adapter of an invocation handed to it),
and is billed to nobody: each invocation is billed to its own function by its share of the
passes it was in. Every other function keeps its own isolated runtime."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from slfaas.gpu_node.config import NodeConfig
from slfaas.gpu_node.types import SHARED_REVISION, FunctionSpec, shared_pool_key

SHARED_HANDLER = "slfaas.lora.handler"
SHARED_TIMEOUT_S = 900   # the runtime's own; each invocation keeps its function's timeout


def shared_runtime_spec(function: FunctionSpec, code_dir: Path, max_batch_size: int, memory_mb: int) -> FunctionSpec:
    """The shared runtime's spec for ``function``'s backbone; ``code_dir``: an empty platform
    directory (the runtime's task root holds no function's files)."""
    name, revision = shared_pool_key(function.base_model_path)
    assert revision == SHARED_REVISION
    return FunctionSpec(name=name, version="$LATEST", revision_id=revision, arn="", code_dir=code_dir,
                        base_model_path=function.base_model_path, handler=SHARED_HANDLER, timeout_s=SHARED_TIMEOUT_S,
                        memory_mb=memory_mb, max_batch_size=max_batch_size)


def shared_spec_factory(config: NodeConfig) -> Callable[[FunctionSpec], FunctionSpec]:
    """The node's: shared runtimes with its settings, their task root an empty directory."""
    task_root = Path(config.data_dir) / "shared-runtime"

    def make(function: FunctionSpec) -> FunctionSpec:
        task_root.mkdir(mode=0o755, parents=True, exist_ok=True)
        return shared_runtime_spec(function, task_root, config.shared_max_batch_size, config.shared_memory_mb)
    return make
