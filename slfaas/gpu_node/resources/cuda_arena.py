"""The CUDA backbone: ONE device allocation per base model, shared through ONE IPC handle.

Memory: CUDA VMM memory exported per instance as a descriptor that the instance maps
read-only (``slfaas.weights.cuda_vmm``), or, where VMM is missing, a torch allocation shared
through one legacy IPC handle (``export``).

Layout: each safetensors file's data section is copied verbatim into the arena (big
sequential reads), at 2 MiB-aligned bases; a tensor is a view at ``base + data_offset``.
Loading overlaps file reads (parallel threads, pinned host buffers) with async host→device
copies. Instances receive the IPC handle plus the tensor table in a small file, open the
handle once and assign views — no per-tensor handles, no copies.

CUDA IPC memory cannot be mapped read-only, so integrity is checked instead: a per-chunk
digest (sum and position-weighted sum of the arena as int32) computed on the GPU at load and
compared on a schedule and on demand.
"""
from __future__ import annotations

import logging
import os
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slfaas.gpu_node.resources.integrity import IntegrityReport
from slfaas.weights.cuda_ipc import encode_export
from slfaas.weights.safetensors import SAFETENSORS_DTYPES, WeightsFormatError, checkpoint_tensors

log = logging.getLogger(__name__)

_BASE_ALIGN_BYTES = 2 << 20
_CHUNK_BYTES = 64 << 20          # digest granularity
_COPY_BYTES = int(os.environ.get("SLFAAS_LOAD_CHUNK_MB", "32")) << 20
_READ_THREADS = int(os.environ.get("SLFAAS_LOAD_THREADS", "16"))


@dataclass(frozen=True)
class ArenaSegment:
    path: Path
    file_offset_bytes: int
    arena_offset_bytes: int
    nbytes: int


@dataclass(frozen=True)
class ArenaTensor:
    name: str
    dtype: str
    shape: tuple[int, ...]
    offset_bytes: int
    nbytes: int


def plan_layout(model_dir: Path) -> tuple[list[ArenaSegment], list[ArenaTensor], int]:
    tensors = checkpoint_tensors(model_dir)
    by_file: dict[Path, list] = {}
    for t in tensors:
        if t.dtype not in SAFETENSORS_DTYPES:
            raise WeightsFormatError(f"tensor {t.name!r} has unsupported dtype {t.dtype}")
        by_file.setdefault(t.path, []).append(t)
    segments: list[ArenaSegment] = []
    table: list[ArenaTensor] = []
    base = 0
    for path, items in sorted(by_file.items()):
        start = min(t.file_offset_bytes for t in items)
        end = max(t.file_offset_bytes + t.nbytes for t in items)
        segments.append(ArenaSegment(path, start, base, end - start))
        for t in items:
            off = base + t.file_offset_bytes - start
            table.append(ArenaTensor(t.name, t.dtype, t.shape, off, t.nbytes))
        base = (base + end - start + _BASE_ALIGN_BYTES - 1) // _BASE_ALIGN_BYTES * _BASE_ALIGN_BYTES
    total = (base + _CHUNK_BYTES - 1) // _CHUNK_BYTES * _CHUNK_BYTES  # whole chunks for the digest
    return segments, table, max(total, _CHUNK_BYTES)


class CudaArena:
    def __init__(self, model_dir: Path, device: str):
        import torch

        self._torch = torch
        self.model_dir = Path(model_dir)
        self.device = torch.device(device)
        self.segments, self.table, self.size_bytes = plan_layout(self.model_dir)
        self.data_bytes = sum(s.nbytes for s in self.segments)
        self.vmm, self.table_fd = self._allocate()
        self.load_s = self.load()
        self.load_gb_per_s = self.data_bytes / max(self.load_s, 1e-9) / 1e9
        self._weights = self._digest_weights()
        self.reference = self.digest()
        torch.cuda.empty_cache()  # digest scratch: the node's own GPU footprint is the arena

    def _allocate(self) -> tuple[Any, int]:
        """The arena's device memory: CUDA VMM memory exportable as a descriptor (instances map it
        read-only, as any uid), else (``SLFAAS_ARENA=ipc`` or no VMM) a torch tensor shared by a
        legacy IPC handle. Returns (the VMM mapping or None, the tensor-table descriptor or -1)."""
        torch = self._torch
        with torch.cuda.device(self.device):
            torch.zeros(1, device=self.device)   # the primary context, current in this thread
            if os.environ.get("SLFAAS_ARENA", "vmm") == "vmm":
                from slfaas.weights import cuda_vmm
                try:
                    vmm = cuda_vmm.create(self.size_bytes, self.device.index or 0)
                except cuda_vmm.VmmError as exc:
                    log.warning("CUDA VMM is not available (%s): sharing the backbone by a legacy IPC handle, "
                                "which instances running as another uid cannot open", exc)
                else:
                    self.arena = vmm.tensor()[: self.size_bytes]
                    self.arena.zero_()
                    table = [(t.name, t.dtype, t.shape, t.offset_bytes, t.nbytes) for t in self.table]
                    return vmm, cuda_vmm.table_fd(self.size_bytes, table)
            self.arena = torch.zeros(self.size_bytes, dtype=torch.uint8, device=self.device)
        return None, -1

    # loading
    def load(self) -> float:
        """(Re)fill the arena from the checkpoint files; returns seconds taken."""
        torch = self._torch
        jobs: queue.Queue = queue.Queue()
        for seg in self.segments:
            for pos in range(0, seg.nbytes, _COPY_BYTES):
                jobs.put((seg, pos, min(_COPY_BYTES, seg.nbytes - pos)))
        errors: list[BaseException] = []
        t0 = time.perf_counter()

        def worker() -> None:
            with torch.cuda.device(self.device):
                stream = torch.cuda.Stream(self.device)
                bufs = [torch.empty(_COPY_BYTES, dtype=torch.uint8, pin_memory=True) for _ in range(2)]
                events = [None, None]
                views = [memoryview(b.numpy()) for b in bufs]
                fds: dict[Path, int] = {}
                k = 0
                try:
                    while not errors:
                        try:
                            seg, pos, n = jobs.get_nowait()
                        except queue.Empty:
                            break
                        slot = k % 2
                        if events[slot] is not None:
                            events[slot].synchronize()  # that buffer's previous copy is done
                        fd = fds.get(seg.path)
                        if fd is None:
                            fd = fds[seg.path] = os.open(seg.path, os.O_RDONLY)
                        got = os.preadv(fd, [views[slot][:n]], seg.file_offset_bytes + pos)
                        if got != n:
                            raise WeightsFormatError(f"{seg.path.name}: short read")
                        dst = seg.arena_offset_bytes + pos
                        with torch.cuda.stream(stream):
                            self.arena[dst:dst + n].copy_(bufs[slot][:n], non_blocking=True)
                            ev = torch.cuda.Event()
                            ev.record(stream)
                        events[slot] = ev
                        k += 1
                    stream.synchronize()
                except BaseException as exc:  # surfaced to the caller below
                    errors.append(exc)
                finally:
                    for fd in fds.values():
                        os.close(fd)

        threads = [threading.Thread(target=worker, name=f"arena-load-{i}") for i in range(_READ_THREADS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        torch.cuda.synchronize(self.device)
        if errors:
            raise errors[0]
        return time.perf_counter() - t0

    # integrity
    def _digest_weights(self) -> Any:
        torch = self._torch
        g = torch.Generator(device="cpu").manual_seed(0x5EED)
        w = torch.randint(-(2 ** 31), 2 ** 31 - 1, (_CHUNK_BYTES // 4,), generator=g, dtype=torch.int64)
        w = (w | 1).to(torch.int32)  # odd multipliers are invertible mod 2^32: any change shows
        return w.to(self.device)

    def digest(self) -> Any:
        """Per-chunk (sum, weighted sum) of the arena as int32 words, wrapping mod 2^32, on
        the GPU: [n_chunks, 2]. Any change of one word changes both sums (odd weights)."""
        torch = self._torch
        words = self.arena.view(torch.int32).view(-1, _CHUNK_BYTES // 4)
        out = torch.empty((words.shape[0], 2), dtype=torch.int32, device=self.device)
        step = 4  # chunks per kernel: bounds the temporary to 4 × 64 MiB
        for i in range(0, words.shape[0], step):
            block = words[i:i + step]
            out[i:i + step, 0] = block.sum(dim=1, dtype=torch.int32)
            out[i:i + step, 1] = (block * self._weights).sum(dim=1, dtype=torch.int32)
        return out

    def verify(self) -> IntegrityReport:
        torch = self._torch
        torch.cuda.synchronize(self.device)
        t0 = time.perf_counter()
        now = self.digest()
        bad_chunks = (now != self.reference).any(dim=1).nonzero().flatten().tolist()
        elapsed_ms = (time.perf_counter() - t0) * 1000
        torch.cuda.empty_cache()
        bad: list[str] = []
        for c in bad_chunks:
            lo, hi = c * _CHUNK_BYTES, (c + 1) * _CHUNK_BYTES
            bad.extend(t.name for t in self.table if t.offset_bytes < hi and t.offset_bytes + t.nbytes > lo)
        return IntegrityReport(not bad_chunks, self.size_bytes, elapsed_ms, tuple(dict.fromkeys(bad)))

    def reload(self) -> float:
        self.arena.zero_()
        took = self.load()
        self.reference = self.digest()  # the files are the truth; re-derive in case they changed
        self._torch.cuda.empty_cache()
        return took

    # sharing
    def export(self, out_file: Path) -> Path:
        """Write the IPC handle (torch's CUDA IPC reduction of the one arena tensor) and the
        tensor table; a fresh export per instance gives each its own IPC reference count."""
        from torch.multiprocessing.reductions import reduce_tensor

        rebuild, args = reduce_tensor(self.arena)
        payload = encode_export(rebuild, args, str(self.device),
                                [(t.name, t.dtype, t.shape, t.offset_bytes, t.nbytes) for t in self.table])
        tmp = out_file.with_suffix(".tmp")
        tmp.write_bytes(payload)
        os.chmod(tmp, 0o600)
        os.replace(tmp, out_file)
        return out_file

    def close(self) -> None:
        self._torch.cuda.synchronize(self.device)
        del self.arena
        if self.vmm is not None:
            self.vmm.close()
            os.close(self.table_fd)
        else:
            self._torch.cuda.ipc_collect()  # release IPC records whose consumers are gone
        self._torch.cuda.empty_cache()
