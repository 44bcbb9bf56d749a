"""A generic runtime that waits to become one function's instance (the warm pools).

Started before any function needs it, it pays the cold start's biggest share up front (the
library imports: seconds), then blocks on its pool socket. Specialising it is one message
from the node: the function's environment plus descriptors (SCM_RIGHTS): the backbone
(read-only) and, for a container, the function's own code files and the base model's
config/tokenizer files, which it links into a private directory under /tmp (nothing was
mounted for the function, so the container still sees only that function's files). A
process sandbox sees the node's filesystem: its message names no files and the environment's
paths are used as they are. Either way it then runs the ordinary runtime
(``slfaas.functions.__main__``) in this same process.

    python -m slfaas.functions.prewarm      (env SLFAAS_POOL_SOCKET: the node's pool socket)
"""
from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slfaas.runtime_contract import (ENV_BASE_MODEL_DIR, ENV_CODE_DIR, ENV_FUNCTION_NAME, ENV_POOL_SOCKET, ENV_PREWARM,
                                     ENV_SLOT_MODULES, ENV_SLOT_RANK, ENV_TASK_ROOT, ENV_WARMUP_TOKENS, MAX_FDS,
                                     SPEC_HEADER)

if TYPE_CHECKING:
    from slfaas.functions.activity import ActivityGate

TASK_DIR = Path("/tmp/slfaas/task")
MODEL_DIR = Path("/tmp/slfaas/model")


def preimport() -> float:
    """What every runtime imports before it can attach a backbone (the slow part)."""
    t0 = time.perf_counter()
    import accelerate  # noqa: F401
    import peft  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer  # noqa: F401

    import slfaas.functions.context  # noqa: F401
    import slfaas.functions.engine  # noqa: F401
    return time.perf_counter() - t0


def _recv_spec(sock: socket.socket) -> tuple[dict, list[int]]:
    data, fds, _flags, _addr = socket.recv_fds(sock, 1 << 16, MAX_FDS + 3)
    if len(data) < SPEC_HEADER.size:
        raise ConnectionError("the node closed the pool socket")
    (length,) = SPEC_HEADER.unpack_from(data)
    body = data[SPEC_HEADER.size:]
    while len(body) < length:
        chunk = sock.recv(length - len(body))
        if not chunk:
            raise ConnectionError("short specialisation message")
        body += chunk
    return json.loads(body), fds


def _link_files(directory: Path, names: list[str], fds: list[int]) -> None:
    """``name`` → ``/proc/self/fd/N``: readable by this process only, nothing copied."""
    for name, fd in zip(names, fds):
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(f"/proc/self/fd/{fd}", path)


def specialise(spec: dict, fds: list[int]) -> None:
    os.environ.clear()
    os.environ.update(spec["env"])
    names = spec.get("fd_env", [])   # the backbone's descriptors came first, in this order
    for name, fd in zip(names, fds):
        os.environ[name] = str(fd)
    rest = fds[len(names):]
    if "task_files" in spec:  # a container: the function's files came as descriptors
        task, model = spec["task_files"], spec["model_files"]
        TASK_DIR.mkdir(parents=True, exist_ok=True)
        MODEL_DIR.mkdir(parents=True, exist_ok=True)
        _link_files(TASK_DIR, task, rest[: len(task)])
        _link_files(MODEL_DIR, model, rest[len(task):])
        os.environ.update({ENV_CODE_DIR: str(TASK_DIR), ENV_TASK_ROOT: str(TASK_DIR),
                           ENV_BASE_MODEL_DIR: str(MODEL_DIR)})
    os.chdir(os.environ[ENV_CODE_DIR])  # where a cold-started runtime starts


def prewarm(gate: "ActivityGate | None" = None) -> tuple[Any, dict]:
    """Everything a cold start does before its adapter: device context, the backbone attached,
    empty LoRA slots, and warm-up forwards over every shape family (no lazy set-up later)."""
    from slfaas.functions.engine import BackboneSource, LoraEngine
    from slfaas.functions.slot_geometry import DEFAULT_GEOMETRY, SlotGeometry
    from slfaas.functions.slots import WarmupShapes

    geometry = DEFAULT_GEOMETRY
    if os.environ.get(ENV_SLOT_RANK):
        modules = frozenset(m for m in os.environ.get(ENV_SLOT_MODULES, "").split(",") if m)
        geometry = SlotGeometry(int(os.environ[ENV_SLOT_RANK]), modules or DEFAULT_GEOMETRY.target_modules)
    warmup = WarmupShapes()
    if os.environ.get(ENV_WARMUP_TOKENS):
        warmup = WarmupShapes(tuple(int(n) for n in os.environ[ENV_WARMUP_TOKENS].split(",")))
    engine = LoraEngine.prewarmed(BackboneSource.from_env(), Path(os.environ[ENV_BASE_MODEL_DIR]), geometry,
                                  warmup, pause=gate.pause if gate is not None else None)
    t = engine.prewarm_timings
    facts = {"prewarmed": True, "device_init_s": round(t.device_init_s, 3),
             "backbone_attach_s": round(t.backbone_attach_s, 3), "warmup_s": round(engine.warmup_s, 3)}
    if gate is not None:
        facts["paused_s"] = round(gate.paused_s, 3)   # before its imports and between warm-up forwards
    return engine, facts


def main() -> int:
    from slfaas.functions.__main__ import _die_with_node

    _die_with_node()  # a pool process dies with its node, like an instance (no-op in a container)
    from slfaas.functions.activity import QUIET_BEFORE_IMPORTS_S, gate_from_env

    gate, release = gate_from_env()   # the node's count of running invocations, if it sent one
    try:
        if gate is not None:
            gate.wait_quiet(QUIET_BEFORE_IMPORTS_S)   # seconds of CPU that requests would feel
        imports_s = preimport()
        engine, facts = prewarm(gate) if os.environ.get(ENV_PREWARM) == "1" else (None, {})
    finally:
        release()   # before any function owns this runtime: it must not see its neighbours' traffic
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(os.environ[ENV_POOL_SOCKET])
        sock.sendall(json.dumps({"ready": True, "imports_s": round(imports_s, 3), **facts}).encode() + b"\n")
        spec, fds = _recv_spec(sock)  # blocks until a function needs this instance (or the node goes)
    except (OSError, ValueError):
        return 0  # the node stopped or died: nothing to do
    finally:
        sock.close()
    specialise(spec, fds)
    print(f"warm-pool runtime{' (pre-warmed)' if engine else ''} specialised for "
          f"{spec['env'].get(ENV_FUNCTION_NAME)} (imports done {imports_s:.2f} s before)", flush=True)
    from slfaas.functions.__main__ import main as runtime_main
    return runtime_main(engine)


if __name__ == "__main__":
    sys.exit(main())
