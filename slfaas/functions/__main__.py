"""Entry point of a function instance: ``python -m slfaas.functions`` inside a sandbox.

Init (imports, backbone attach, adapter load, handler import) then the Runtime API loop:
one at a time, or, with SLFAAS_MAX_BATCH_SIZE = K > 1, K workers each taking invocations
from ``/next`` whose generations share forward passes (``slfaas.functions.batching``).
Init failures are reported to ``/init/error``; handler failures to ``/invocation/{id}/error``
with Lambda's ``{"errorMessage", "errorType", "stackTrace"}`` body.
"""
from __future__ import annotations

import ctypes
import importlib.util
import json
import logging
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from pathlib import Path
from typing import Any, Callable

from slfaas.functions.runtime_client import NodeGone, RuntimeClient
from slfaas.runtime_contract import (ENV_ADAPTER_FD, ENV_BACKBONE_PRIVATE, ENV_BASE_MODEL_DIR, ENV_CODE_DIR,
                                     ENV_HANDLER, ENV_NODE_PID, ENV_RUNTIME_SOCKET, ENV_SHARED_EXECUTION,
                                     LOG_SYNC_MARKER, instance_device_bytes, max_batch_size)

log = logging.getLogger("slfaas.functions")


def _die_with_node() -> None:
    """Ask the kernel to kill us if the node dies, so a crashed node leaves no orphans."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass
    node_pid = int(os.environ.get(ENV_NODE_PID, "0") or 0)
    if node_pid and os.getppid() != node_pid:
        sys.exit(0)  # the node died before the prctl took effect


def _one_output_stream() -> None:
    """stderr onto stdout's descriptor: one ordered stream of output (Docker keeps two pipes),
    so the log sync marker written to it comes after everything printed before it."""
    try:
        sys.stderr.flush()
        os.dup2(1, 2)
    except OSError:
        pass


def _log_sync(request_id: str) -> None:
    """Tell the node that everything this invocation printed so far has been written."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed or broken by the handler
            pass
    try:
        os.write(1, f"{LOG_SYNC_MARKER}{request_id}\n".encode())
    except OSError:
        pass


def _error_body(exc: BaseException, error_type: str | None = None) -> dict:
    return {
        "errorMessage": str(exc) or exc.__class__.__name__,
        "errorType": error_type or exc.__class__.__name__,
        "stackTrace": traceback.format_exception(type(exc), exc, exc.__traceback__)[1:],
    }


def _load_handler(code_dir: Path, handler_name: str) -> Callable[[Any, Any], Any]:
    """``handler.py`` in the code zip wins; otherwise the built-in ``slfaas.lora``."""
    user = code_dir / "handler.py"
    if user.is_file():
        spec = importlib.util.spec_from_file_location("handler", user)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["handler"] = module
        spec.loader.exec_module(module)
        attr = handler_name.rsplit(".", 1)[-1] if handler_name.startswith("handler.") else "handler"
        fn = getattr(module, attr, None)
        if not callable(fn):
            raise AttributeError(f"handler.py has no callable '{attr}'")
        return fn
    from slfaas.lora import handler
    return handler


def main(engine: Any = None) -> int:
    """``engine``: a pre-warmed runtime's (backbone attached, empty slots, kernels warm): init is
    then only the adapter copied into its slots and the handler's import."""
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(levelname)s %(name)s: %(message)s")
    _one_output_stream()
    _die_with_node()
    client = RuntimeClient(os.environ[ENV_RUNTIME_SOCKET])
    shared = os.environ.get(ENV_SHARED_EXECUTION) == "1"
    # the node's settings, read before the function's code is imported (it may change os.environ)
    capacity, bound = max_batch_size(os.environ), instance_device_bytes(os.environ)
    private_backbone = bool(os.environ.get(ENV_BACKBONE_PRIVATE))
    try:
        from slfaas.functions.engine import BackboneSource, LoraEngine

        t0 = time.perf_counter()
        code_dir = Path(os.environ[ENV_CODE_DIR])
        facts: dict[str, Any] = {}
        if shared:   # the platform's runtime of this backbone: adapters come per invocation
            from slfaas.functions.shared import SharedEngine
            engine = SharedEngine.from_env(Path(os.environ[ENV_BASE_MODEL_DIR]), engine)
            facts = {"shared_execution": 1}
        elif engine is None:
            engine = LoraEngine(BackboneSource.from_env(), Path(os.environ[ENV_BASE_MODEL_DIR]), code_dir)
        else:
            facts = _specialise(engine, code_dir)
        t_handler = time.perf_counter()
        handler = _load_handler(code_dir, os.environ.get(ENV_HANDLER, ""))
        t = engine.timings
        init_s = time.perf_counter() - t0
        log.info("init done in %.3f s (imports %.2f s, backbone attach %.3f s, adapter load %.3f s)",
                 init_s, t.imports_s, t.backbone_attach_s, t.adapter_load_s)
        client.init_report({"init_s": round(init_s, 4), "imports_s": round(t.imports_s, 4),
                            "backbone_attach_s": round(t.backbone_attach_s, 4),
                            "adapter_load_s": round(t.adapter_load_s, 4),
                            "device_init_s": round(t.device_init_s, 4),
                            "handler_import_s": round(time.perf_counter() - t_handler, 4),
                            "adapter_bytes": engine.adapter_bytes, "device": str(engine.device),
                            "log_sync": 1, **facts})   # writes LOG_SYNC_MARKER before each response
    except NodeGone:
        return 1
    except Exception as exc:  # report, then exit: the node fails the cold-start invocation
        traceback.print_exc()
        try:
            client.init_error(_error_body(exc, f"Runtime.InitError.{exc.__class__.__name__}"))
        except NodeGone:
            pass
        return 1

    if capacity == 1 and not shared:
        _serve(client, lambda _inv: nullcontext(engine), handler)
        return 0
    # Several invocations at once: one worker per place, each taking its own from /next (as
    # Lambda's runtimes do), their generations batched by one loop (BatchEngine). A handler
    # of the function's own then runs in several threads at once.
    from slfaas.functions.batching import BatchEngine
    import torch

    from slfaas.functions.device_memory import allocator_reserved, bound_allocator, device_headroom
    # the node's share for this instance, beside its backbone: a private backbone is in this
    # process's allocator already, and is not counted against it
    beside = allocator_reserved(torch, engine.device) if private_backbone else 0
    if bound_allocator(torch, engine.device, bound, beside):
        log.info("device memory beside the backbone held to %d MiB (the node's bound for this instance)",
                 bound // 2**20)
    batched = BatchEngine(engine, capacity, headroom=device_headroom(torch, engine.device, bound, beside),
                          bound_bytes=bound)
    log.info("serving up to %d invocations at once, batched%s", capacity, " (shared: adapters per invocation)"
             if shared else "")
    scope = _shared_scope(client, engine, batched) if shared else (lambda _inv: nullcontext(batched))
    workers = [threading.Thread(target=_serve, args=(client, scope, handler), name=f"worker-{i}", daemon=True)
               for i in range(capacity)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return 0


def _shared_scope(client: RuntimeClient, shared: Any, batched: Any) -> Callable[[Any], Any]:
    """A shared runtime's engine for one invocation: its adapter held loaded (fetched from the
    node the first time) while the invocation runs, every request tagged with it."""
    from slfaas.functions.shared import AdapterUnavailable, AdapterView

    @contextmanager
    def scope(inv: Any) -> Iterator[Any]:
        if not inv.adapter_id:
            raise AdapterUnavailable("a shared runtime's invocation must name its adapter")
        with shared.using(inv.adapter_id, client.adapter):
            yield AdapterView(batched, inv.adapter_id)
    return scope


def _serve(client: RuntimeClient, scope: Callable[[Any], Any], handler: Callable[[Any, Any], Any]) -> None:
    """/next → handler → response, until the node goes (or stops this instance). ``scope``:
    the engine an invocation's handler uses, as a context held while the invocation runs."""
    while True:
        try:
            inv = client.next()
        except NodeGone:
            return
        with ExitStack() as held:
            _serve_one(client, inv, held, scope, handler)


def _serve_one(client: RuntimeClient, inv: Any, held: ExitStack, scope: Callable[[Any], Any],
               handler: Callable[[Any, Any], Any]) -> None:
    from slfaas.functions.context import LambdaContext

    try:
        context = LambdaContext(held.enter_context(scope(inv)), inv)
        try:
            event = json.loads(inv.payload) if inv.payload else {}
        except ValueError as exc:
            raise ValueError(f"event is not JSON: {exc}") from exc
        result = handler(event, context)
        if inv.response_stream:
            pieces = _pieces(result)
            first = next(pieces, b"")  # a failure before the first piece is a plain /error
        else:
            body = b"".join(_pieces(result)) if isinstance(result, Iterator) else json.dumps(result).encode()
    except Exception as exc:
        traceback.print_exc()
        _log_sync(inv.request_id)
        try:
            client.error(inv.request_id, _error_body(exc))
        except NodeGone:
            pass   # this invocation is gone (cancelled, timed out) or the node is: /next tells
        if _device_lost(exc):
            _exit_device_lost()
        return
    try:
        if inv.response_stream:
            _stream(client, inv.request_id, first, pieces, context)
        else:
            _log_sync(inv.request_id)
            client.respond(inv.request_id, body, metrics=context.usage.metrics())
    except NodeGone:
        pass


def _specialise(engine: Any, code_dir: Path) -> dict[str, Any]:
    """Make a pre-warmed runtime this function's: its adapter from the node's host tier (a
    descriptor of just that adapter's weights) or from its code (the disk tier)."""
    from slfaas.functions.adapter_tensors import AdapterSource, read_config

    fd = os.environ.get(ENV_ADAPTER_FD)
    if fd:
        source = AdapterSource(read_config(code_dir / "adapter_config.json"), weights_fd=int(fd), directory=code_dir)
    else:
        source = AdapterSource.from_dir(code_dir)
    spec = engine.specialise(source)
    return {"runtime_source": "prewarmed", "adapter_source": "host" if fd else "disk", "slot_path": spec.path,
            "specialise_s": round(spec.seconds, 4)}


def _device_lost(exc: BaseException) -> bool:
    """A CUDA error is sticky: the context is unusable (e.g. after a write into the read-only
    backbone), so the instance ends after reporting it and the next request gets a fresh one."""
    name = type(exc).__name__
    return name == "AcceleratorError" or (isinstance(exc, RuntimeError) and "CUDA error" in str(exc))


def _exit_device_lost() -> None:
    """End the whole runtime (every worker thread) once the error has been reported."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)


def _pieces(result: Any) -> Iterator[bytes]:
    """A handler's result as response bytes: an iterator's items one by one (str as UTF-8,
    bytes as they are, anything else as JSON), any other value as one JSON document."""
    if not isinstance(result, Iterator):
        yield json.dumps(result).encode()
        return
    for item in result:
        if isinstance(item, (bytes, bytearray)):
            yield bytes(item)
        elif isinstance(item, str):
            yield item.encode()
        else:
            yield json.dumps(item).encode()


def _stream(client: RuntimeClient, request_id: str, first: bytes, rest: Iterator[bytes], context: Any) -> None:
    """Lambda's streaming response mode: each piece goes out as one HTTP chunk when the handler
    produces it; a failure after streaming began travels in the error trailers."""
    stream = client.respond_stream(request_id)
    try:
        stream.write(first)
        for piece in rest:
            stream.write(piece)
    except NodeGone:
        raise
    except Exception as exc:
        traceback.print_exc()
        _log_sync(request_id)
        stream.close(error=_error_body(exc))
        if _device_lost(exc):
            _exit_device_lost()
        return
    metrics = dict(getattr(context, "result_metrics", None) or {})
    metrics.update(context.usage.metrics())   # the runtime's measures, whatever the handler set
    _log_sync(request_id)
    stream.close(metrics=metrics)


if __name__ == "__main__":
    sys.exit(main())
