"""BackboneOwner: loads each base model ONCE per node and is the only writer of its bytes."""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from slfaas.errors import NodeError
from slfaas.gpu_node.shared_weights import SharedImage, WeightsFormatError, build_shared_image

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BackboneInfo:
    model_path: str
    size_bytes: int
    tensor_count: int
    load_s: float
    load_gb_per_s: float
    loaded_ts: float


@dataclass
class _Slot:
    ready: threading.Event
    image: SharedImage | None = None
    info: BackboneInfo | None = None
    error: str | None = None


class BackboneOwner:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._slots: dict[Path, _Slot] = {}

    def acquire(self, model_dir: Path) -> SharedImage:
        """The shared image of ``model_dir``, loading it if no one has; concurrent callers
        wait for the one load. A failed load is not cached: the next call tries again."""
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
        if slot.image is None:
            raise NodeError(f"backbone {key} failed to load: {slot.error}")
        return slot.image

    def _load(self, key: Path, slot: _Slot) -> None:
        t0 = time.perf_counter()
        try:
            image = build_shared_image(key, name=key.name)
        except (WeightsFormatError, OSError) as exc:
            log.error("loading backbone %s failed: %s", key, exc)
            slot.error = str(exc)
            with self._lock:
                self._slots.pop(key, None)
            slot.ready.set()
            return
        load_s = time.perf_counter() - t0
        slot.image = image
        slot.info = BackboneInfo(str(key), image.size_bytes, len(image.tensors), load_s,
                                 image.data_bytes / max(load_s, 1e-9) / 1e9, time.time())
        log.info("backbone %s loaded once into shared memory: %.1f MB in %.2f s (%.2f GB/s)",
                 key, image.size_bytes / 1e6, load_s, slot.info.load_gb_per_s)
        slot.ready.set()

    def loaded(self) -> list[BackboneInfo]:
        with self._lock:
            return [s.info for s in self._slots.values() if s.info is not None]

    def checksum(self, model_dir: Path) -> str:
        with self._lock:
            slot = self._slots.get(Path(model_dir).resolve())
        if slot is None or slot.image is None:
            raise NodeError(f"backbone {model_dir} is not loaded")
        return slot.image.checksum()

    def close(self) -> None:
        with self._lock:
            slots, self._slots = list(self._slots.values()), {}
        for slot in slots:
            if slot.image is not None:
                slot.image.close()
