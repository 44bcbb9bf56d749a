"""BackboneOwner: loads each base model ONCE per node and is the only writer of its bytes.

Two backends behind one small ABC: on CPU a sealed read-only memfd (the kernel forbids
writes), on CUDA one GPU arena exported as a CUDA VMM descriptor that instances map read-only
(the GPU's MMU refuses writes; where VMM is missing, a legacy IPC handle, which instances could
write through). The node also checks a GPU digest and reloads on a mismatch.
"""
from __future__ import annotations

import hashlib
import logging
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from slfaas.errors import NodeError
from slfaas.gpu_node.resources.integrity import IntegrityReport
from slfaas.gpu_node.resources.shared_weights import SharedImage, build_shared_image
from slfaas.gpu_node.types import BackboneInfo
from slfaas.runtime_contract import ENV_BACKBONE_FD, ENV_BACKBONE_IPC, ENV_BACKBONE_TABLE_FD, ENV_BACKBONE_VMM_FD
from slfaas.weights.safetensors import WeightsFormatError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Attachment:
    """What an instance needs to borrow a backbone: environment and inherited descriptors.
    ``owned_fds``: made for this instance alone; the launcher closes them once its sandbox
    has them."""

    env: dict[str, str]
    inherit_fds: tuple[int, ...] = ()
    owned_fds: tuple[int, ...] = ()


class Backbone(ABC):
    model_path: Path
    device: str
    size_bytes: int      # what the node holds (arena / image, with alignment)
    data_bytes: int      # the checkpoint's tensor bytes
    tensor_count: int
    load_s: float

    @abstractmethod
    def checksum(self) -> str: ...

    @abstractmethod
    def attach(self, scratch_dir: Path, instance_id: str) -> Attachment: ...

    @abstractmethod
    def verify(self) -> IntegrityReport: ...

    @abstractmethod
    def reload(self) -> float: ...

    @abstractmethod
    def close(self) -> None: ...


class CpuBackbone(Backbone):
    def __init__(self, model_path: Path):
        t0 = time.perf_counter()
        self.image: SharedImage = build_shared_image(model_path, name=model_path.name)
        self.load_s = time.perf_counter() - t0
        self.model_path = model_path
        self.device = "cpu"
        self.size_bytes = self.image.size_bytes
        self.data_bytes = self.image.data_bytes
        self.tensor_count = len(self.image.tensors)
        self._reference = self.image.checksum()

    def attach(self, scratch_dir: Path, instance_id: str) -> Attachment:
        return Attachment({ENV_BACKBONE_FD: str(self.image.fd)}, (self.image.fd,))

    def verify(self) -> IntegrityReport:
        # The memfd is sealed against writes, so this cannot fail short of a kernel bug; it
        # proves, cheaply for a CPU-sized model, that the bytes are those read at load.
        t0 = time.perf_counter()
        ok = self.image.checksum() == self._reference
        return IntegrityReport(ok, self.size_bytes, (time.perf_counter() - t0) * 1000)

    def checksum(self) -> str:
        return self.image.checksum()

    def reload(self) -> float:
        raise NodeError("a sealed CPU backbone cannot change, so it is never reloaded")

    def close(self) -> None:
        self.image.close()


class CudaBackbone(Backbone):
    def __init__(self, model_path: Path, device: str):
        from slfaas.gpu_node.resources.cuda_arena import CudaArena

        self.arena = CudaArena(model_path, device)
        self.model_path = model_path
        self.device = device
        self.size_bytes = self.arena.size_bytes
        self.data_bytes = self.arena.data_bytes
        self.tensor_count = len(self.arena.table)
        self.load_s = self.arena.load_s

    def attach(self, scratch_dir: Path, instance_id: str) -> Attachment:
        if self.arena.vmm is not None:   # a read-only mapping of a descriptor: any uid, hardware read-only
            memory_fd = self.arena.vmm.export_fd()
            table_fd = self.arena.table_fd
            return Attachment({ENV_BACKBONE_VMM_FD: str(memory_fd), ENV_BACKBONE_TABLE_FD: str(table_fd)},
                              (memory_fd, table_fd), owned_fds=(memory_fd,))
        path = self.arena.export(scratch_dir / f"{instance_id}.ipc")
        return Attachment({ENV_BACKBONE_IPC: str(path)})

    def verify(self) -> IntegrityReport:
        return self.arena.verify()

    def checksum(self) -> str:
        return hashlib.sha256(self.arena.digest().cpu().numpy().tobytes()).hexdigest()

    def reload(self) -> float:
        return self.arena.reload()

    def close(self) -> None:
        self.arena.close()


@dataclass
class _Slot:
    ready: threading.Event
    backbone: Backbone | None = None
    info: BackboneInfo | None = None
    error: str | None = None


class BackboneOwner:
    def __init__(self, device: str = "cpu", on_change: Callable[[list[BackboneInfo]], None] | None = None) -> None:
        """``on_change``: called with what is resident after each load (billing's idle-backbone
        overhead, the preloader's plans)."""
        self.device = device
        self.on_change = on_change
        self._lock = threading.Lock()
        self._slots: dict[Path, _Slot] = {}

    def acquire(self, model_dir: Path) -> Backbone:
        """The backbone of ``model_dir``, loading it if no one has; concurrent callers wait
        for the one load. A failed load is not cached: the next call tries again."""
        key = Path(model_dir).resolve()
        with self._lock:
            slot = self._slots.get(key)
            loader = slot is None
            if loader:
                slot = self._slots[key] = _Slot(threading.Event())
        assert slot is not None
        if loader:
            self._load(key, slot)
        slot.ready.wait()
        if slot.backbone is None:
            raise NodeError(f"backbone {key} failed to load: {slot.error}")
        return slot.backbone

    def _load(self, key: Path, slot: _Slot) -> None:
        try:
            backbone: Backbone = CpuBackbone(key) if self.device == "cpu" else CudaBackbone(key, self.device)
        except (WeightsFormatError, OSError, RuntimeError) as exc:
            log.error("loading backbone %s failed: %s", key, exc)
            slot.error = str(exc)
            with self._lock:
                self._slots.pop(key, None)
            slot.ready.set()
            return
        gbps = backbone.data_bytes / max(backbone.load_s, 1e-9) / 1e9
        slot.backbone = backbone
        slot.info = BackboneInfo(str(key), self.device, backbone.size_bytes, backbone.tensor_count,
                                 backbone.load_s, gbps, time.time())
        log.info("backbone %s loaded once on %s: %.1f MB in %.2f s (%.2f GB/s)",
                 key, self.device, backbone.size_bytes / 1e6, backbone.load_s, gbps)
        slot.ready.set()
        if self.on_change is not None:
            self.on_change(self.loaded())

    def loaded(self) -> list[BackboneInfo]:
        with self._lock:
            return [s.info for s in self._slots.values() if s.info is not None]

    def backbones(self) -> dict[Path, Backbone]:
        with self._lock:
            return {k: s.backbone for k, s in self._slots.items() if s.backbone is not None}

    def get(self, model_dir: Path) -> Backbone:
        with self._lock:
            slot = self._slots.get(Path(model_dir).resolve())
        if slot is None or slot.backbone is None:
            raise NodeError(f"backbone {model_dir} is not loaded")
        return slot.backbone

    def checksum(self, model_dir: Path) -> str:
        return self.get(model_dir).checksum()

    def info(self, model_dir: Path) -> BackboneInfo:
        key = Path(model_dir).resolve()
        with self._lock:
            slot = self._slots.get(key)
        if slot is None or slot.info is None:
            raise NodeError(f"backbone {model_dir} is not loaded")
        return slot.info

    def close(self) -> None:
        with self._lock:
            slots, self._slots = list(self._slots.values()), {}
        for slot in slots:
            if slot.backbone is not None:
                slot.backbone.close()
