"""The GPU backbone as CUDA virtual-memory-management (VMM) memory shared by a file descriptor.

The node creates the arena's physical memory with ``cuMemCreate`` (requesting POSIX file
descriptor handles), maps it read-write for itself, and exports one descriptor per instance
(``cuMemExportToShareableHandle``). An instance imports the descriptor
(``cuMemImportFromShareableHandle``), maps it and asks only for ``PROT_READ`` access
(``cuMemSetAccess``): the GPU's MMU then refuses its writes, as the kernel does for the CPU
backbone's sealed memfd, and, unlike a legacy CUDA IPC handle, a descriptor can be opened by a
process running as another user. The tensor table travels beside it in a sealed memfd.

Driver API calls go through ctypes to ``libcuda.so.1`` (no extra package), in a thread whose
current context is the device's primary context (the one torch uses).
"""
from __future__ import annotations

import ctypes
import fcntl
import json
import os
from dataclasses import dataclass
from typing import Any

_POSIX_FD = 1               # CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR
_PINNED = 1                 # CU_MEM_ALLOCATION_TYPE_PINNED
_LOCATION_DEVICE = 1        # CU_MEM_LOCATION_TYPE_DEVICE
_GRANULARITY_RECOMMENDED = 1
PROT_READ = 1               # CU_MEM_ACCESS_FLAGS_PROT_READ
PROT_READWRITE = 3          # CU_MEM_ACCESS_FLAGS_PROT_READWRITE


class VmmError(RuntimeError):
    """A CUDA driver call of the VMM API failed (or the API is not there)."""


class _Location(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int), ("id", ctypes.c_int)]


class _AllocFlags(ctypes.Structure):
    _fields_ = [("compressionType", ctypes.c_ubyte), ("gpuDirectRDMACapable", ctypes.c_ubyte),
                ("usage", ctypes.c_ushort), ("reserved", ctypes.c_ubyte * 4)]


class _AllocationProp(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int), ("requestedHandleTypes", ctypes.c_int), ("location", _Location),
                ("win32HandleMetaData", ctypes.c_void_p), ("allocFlags", _AllocFlags)]


class _AccessDesc(ctypes.Structure):
    _fields_ = [("location", _Location), ("flags", ctypes.c_int)]


_lib: Any = None


def _driver() -> Any:
    global _lib
    if _lib is None:
        try:
            _lib = ctypes.CDLL("libcuda.so.1")
        except OSError as exc:
            raise VmmError(f"the CUDA driver library cannot be loaded: {exc}") from exc
    return _lib


def _check(result: int, what: str) -> None:
    if result != 0:
        name = ctypes.c_char_p()
        _driver().cuGetErrorName(result, ctypes.byref(name))
        raise VmmError(f"{what} failed: {name.value.decode() if name.value else result}")


def _prop(device_index: int) -> _AllocationProp:
    prop = _AllocationProp()
    prop.type = _PINNED
    prop.requestedHandleTypes = _POSIX_FD
    prop.location = _Location(_LOCATION_DEVICE, device_index)
    return prop


def granularity(device_index: int) -> int:
    out = ctypes.c_size_t()
    _check(_driver().cuMemGetAllocationGranularity(ctypes.byref(out), ctypes.byref(_prop(device_index)),
                                                   _GRANULARITY_RECOMMENDED), "cuMemGetAllocationGranularity")
    return int(out.value)


@dataclass
class VmmMapping:
    """One mapping of VMM memory into this process: ``ptr`` .. ``ptr + size_bytes``."""

    handle: int
    ptr: int
    size_bytes: int
    device_index: int

    def tensor(self) -> Any:
        """A torch uint8 tensor over the mapping (zero-copy, through ``__cuda_array_interface__``)."""
        import torch

        class _Span:
            __cuda_array_interface__ = {"shape": (self.size_bytes,), "typestr": "|u1", "strides": None,
                                        "data": (self.ptr, False), "version": 3}

        return torch.as_tensor(_Span(), device=torch.device("cuda", self.device_index))

    def export_fd(self) -> int:
        """A new descriptor of the physical memory, for one instance (the caller closes it)."""
        fd = ctypes.c_int(-1)
        _check(_driver().cuMemExportToShareableHandle(ctypes.byref(fd), ctypes.c_ulonglong(self.handle),
                                                       _POSIX_FD, ctypes.c_ulonglong(0)),
               "cuMemExportToShareableHandle")
        return int(fd.value)

    def close(self) -> None:
        lib = _driver()
        lib.cuMemUnmap(ctypes.c_ulonglong(self.ptr), ctypes.c_size_t(self.size_bytes))
        lib.cuMemAddressFree(ctypes.c_ulonglong(self.ptr), ctypes.c_size_t(self.size_bytes))
        lib.cuMemRelease(ctypes.c_ulonglong(self.handle))


def _map(handle: int, size_bytes: int, device_index: int, access: int) -> VmmMapping:
    lib = _driver()
    ptr = ctypes.c_ulonglong()
    _check(lib.cuMemAddressReserve(ctypes.byref(ptr), ctypes.c_size_t(size_bytes), ctypes.c_size_t(0),
                                   ctypes.c_ulonglong(0), ctypes.c_ulonglong(0)), "cuMemAddressReserve")
    try:
        _check(lib.cuMemMap(ptr, ctypes.c_size_t(size_bytes), ctypes.c_size_t(0), ctypes.c_ulonglong(handle),
                            ctypes.c_ulonglong(0)), "cuMemMap")
        desc = _AccessDesc(_Location(_LOCATION_DEVICE, device_index), access)
        _check(lib.cuMemSetAccess(ptr, ctypes.c_size_t(size_bytes), ctypes.byref(desc), ctypes.c_size_t(1)),
               "cuMemSetAccess")
    except VmmError:
        lib.cuMemUnmap(ptr, ctypes.c_size_t(size_bytes))
        lib.cuMemAddressFree(ptr, ctypes.c_size_t(size_bytes))
        raise
    return VmmMapping(handle, int(ptr.value), size_bytes, device_index)


def create(size_bytes: int, device_index: int) -> VmmMapping:
    """Node side: new device memory (rounded up to the allocation granularity), mapped read-write."""
    g = granularity(device_index)
    size_bytes = (size_bytes + g - 1) // g * g
    handle = ctypes.c_ulonglong()
    _check(_driver().cuMemCreate(ctypes.byref(handle), ctypes.c_size_t(size_bytes), ctypes.byref(_prop(device_index)),
                                 ctypes.c_ulonglong(0)), "cuMemCreate")
    try:
        return _map(int(handle.value), size_bytes, device_index, PROT_READWRITE)
    except VmmError:
        _driver().cuMemRelease(handle)
        raise


def import_fd(fd: int, size_bytes: int, device_index: int, access: int = PROT_READ) -> VmmMapping:
    """Instance side: map the memory behind ``fd`` (read-only by default)."""
    handle = ctypes.c_ulonglong()
    _check(_driver().cuMemImportFromShareableHandle(ctypes.byref(handle), ctypes.c_void_p(fd), _POSIX_FD),
           "cuMemImportFromShareableHandle")
    try:
        return _map(int(handle.value), size_bytes, device_index, access)
    except VmmError:
        _driver().cuMemRelease(handle)
        raise


# The tensor table beside the memory: a sealed memfd of JSON.
def table_fd(size_bytes: int, tensors: list[tuple]) -> int:
    """``tensors``: (name, safetensors dtype, shape, offset, nbytes); a read-only descriptor."""
    body = json.dumps({"size_bytes": size_bytes, "tensors": [list(t) for t in tensors]}).encode()
    fd = os.memfd_create("slfaas-backbone-table", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.write(fd, body)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_WRITE | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK
                    | fcntl.F_SEAL_SEAL)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_table(fd: int) -> tuple[int, list[tuple]]:
    raw = b""
    pos = 0
    while chunk := os.pread(fd, 1 << 20, pos):
        raw += chunk
        pos += len(chunk)
    doc = json.loads(raw)
    return int(doc["size_bytes"]), [tuple(t) for t in doc["tensors"]]


def open_vmm_backbone(memory_fd: int, table: int, device: str) -> tuple[dict[str, Any], VmmMapping]:
    """Instance side: the backbone's tensors as read-only views of the node's arena."""
    import torch

    from slfaas.weights.safetensors import SAFETENSORS_DTYPES

    dev = torch.device(device)
    torch.cuda.set_device(dev)
    size_bytes, tensors = read_table(table)
    mapping = import_fd(memory_fd, size_bytes, dev.index or 0)
    arena = mapping.tensor()
    state = {}
    for name, dtype, shape, offset, nbytes in tensors:
        t = arena[offset:offset + nbytes].view(getattr(torch, SAFETENSORS_DTYPES[dtype]))
        state[name] = t.view(tuple(shape))
    return state, (mapping, arena)
