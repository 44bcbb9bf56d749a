"""What the batch engine measures of device memory: the errors that mean it ran out, the
model's element size, the headroom a batch may still take, and giving an idle batch's
memory back."""
from __future__ import annotations

from typing import Any, Callable


def oom_errors(torch: Any) -> tuple[type[BaseException], ...]:
    found = (getattr(torch, "OutOfMemoryError", None), getattr(torch.cuda, "OutOfMemoryError", None))
    return tuple(dict.fromkeys(e for e in found if isinstance(e, type) and issubclass(e, BaseException)))


def dtype_bytes(model: Any) -> int:
    return int(getattr(getattr(model, "dtype", None), "itemsize", 2) or 2)


def device_headroom(torch: Any, device: Any, bound_bytes: int | None = None,
                    beside_bytes: int = 0) -> Callable[[], float | None]:
    """Free device memory plus what this process's allocator holds unused (CUDA), and at most
    ``bound_bytes`` less what its allocator holds in use beyond ``beside_bytes`` (a private
    backbone's: the bound is the node's share for this instance beside its backbone, and
    runtimes on one device would otherwise all count the same free memory as theirs);
    elsewhere no limit."""
    if getattr(device, "type", "cpu") != "cuda":
        return lambda: None

    def measure() -> float:
        free, _total = torch.cuda.mem_get_info(device)
        allocated = torch.cuda.memory_allocated(device)
        room = float(free + torch.cuda.memory_reserved(device) - allocated)
        return room if bound_bytes is None else min(room, float(bound_bytes + beside_bytes - allocated))
    return measure


def allocator_reserved(torch: Any, device: Any) -> int:
    """What this process's allocator holds on a CUDA device now (0 elsewhere)."""
    return int(torch.cuda.memory_reserved(device)) if getattr(device, "type", "cpu") == "cuda" else 0


def bound_allocator(torch: Any, device: Any, bound_bytes: int | None, beside_bytes: int = 0) -> bool:
    """Hold this process's allocator to ``bound_bytes`` beyond ``beside_bytes`` (a private
    backbone it holds already) on a CUDA device, cached blocks included: a batch's growing
    cache leaves freed blocks behind that the allocator keeps, and neighbours on the device
    would run out while this process hoards them. Past it an allocation frees the cache and,
    still short, raises OutOfMemoryError, which the batch engine handles. The CUDA context
    is outside the allocator and comes on top. True where a bound was set."""
    if bound_bytes is None or getattr(device, "type", "cpu") != "cuda":
        return False
    total = torch.cuda.get_device_properties(device).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, (bound_bytes + beside_bytes) / total), device)
    return True


def cache_release(torch: Any, device: Any) -> Callable[[], None]:
    """Give everything this process's allocator holds unused back to the device (after running
    out of memory: the retry, or another instance, may need it); elsewhere nothing to do."""
    if getattr(device, "type", "cpu") != "cuda":
        return lambda: None
    return torch.cuda.empty_cache


IDLE_KEEP_BYTES = 1 << 30   # an idle process keeps this much cached: a lone request's scratch


def idle_release(torch: Any, device: Any) -> Callable[[], None]:
    """Give cached device memory back when an emptied batch left more than ``IDLE_KEEP_BYTES``
    unused: the allocator keeps what a batch's cache used, and other instances on the device
    may need it (CUDA; elsewhere nothing to do)."""
    if getattr(device, "type", "cpu") != "cuda":
        return lambda: None

    def release() -> None:
        if torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device) > IDLE_KEEP_BYTES:
            torch.cuda.empty_cache()
    return release
