"""LoRA slots: a runtime's LoRA layers built empty before any function needs them, and filled
for one function by copying its adapter's tensors in.

Each slot module wraps one of the backbone's linear layers and computes PEFT's unmerged LoRA,
``base(x) + B(A(x)) · s``, with A (max_rank × in), B (out × max_rank) and s allocated once.
An adapter of rank r ≤ max_rank goes into A[:r] and B[:, :r], the rest stays zero: the
padded products add exact zeros, so outputs equal PEFT's. Loading only ever writes into the
existing tensors, never replaces them, so their device addresses never change: a forward
captured as a CUDA graph while the runtime pre-warms stays valid after specialisation. The
scaling is a device tensor for the same reason.

All slots of a model are views into ONE device tensor, mirrored by one (pinned) host tensor:
a load writes the adapter into the mirror and sends the changed span in a single copy. Per
slot copies would be hundreds of small synchronous transfers, and on a GPU shared by several
processes each of them waits for the GPU's time slice (measured: ~1 s per specialisation
while other runtimes were warming up, 15 ms when alone).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from slfaas.functions.adapter_tensors import AdapterSource, parse_safetensors, tensor_view
from slfaas.functions.slot_geometry import SlotGeometry, adapter_facts, check_fit, lora_module_keys

log = logging.getLogger(__name__)


class AdapterDoesNotFit(Exception):
    """The adapter cannot be expressed in these slots; the runtime loads it with PEFT instead."""

    def __init__(self, reasons: tuple[str, ...]):
        super().__init__("; ".join(reasons))
        self.reasons = reasons


@dataclass(frozen=True)
class WarmupShapes:
    """The forward shapes a pre-warmed runtime runs before any request: one prefill per
    length (tokens) and a few decode steps after each, so lazy kernel and library set-up
    happens now, not in a function's first request."""

    prefill_tokens: tuple[int, ...] = (1, 16, 64, 256, 512)
    decode_steps: int = 2

    def __post_init__(self) -> None:
        if not self.prefill_tokens or any(n < 1 for n in self.prefill_tokens) or self.decode_steps < 0:
            raise ValueError(f"bad warm-up shapes: {self}")


@dataclass(frozen=True)
class SlotLoad:
    modules: int            # slot modules that now hold the adapter
    rank: int
    scaling: float
    bytes_copied: int       # adapter bytes read (padding is zeroed, not copied)


@dataclass(frozen=True)
class Specialisation:
    """How a pre-warmed runtime became one function's: by copying into its slots, or (an
    adapter no slot fits) the slow way through PEFT's loader, and why."""

    path: str                   # "slots" | "peft"
    seconds: float
    adapter_bytes: int
    reasons: tuple[str, ...] = ()


def slot_dtype(backbone_dtype: torch.dtype) -> torch.dtype:
    """PEFT's choice for adapter weights (``autocast_adapter_dtype``): float32 beside a
    half-precision backbone, else the backbone's dtype."""
    return torch.float32 if backbone_dtype in (torch.float16, torch.bfloat16) else backbone_dtype


class SlotLinear(nn.Module):
    """A linear layer of the backbone (borrowed, never written) plus one LoRA slot. Its A, B
    and scaling are views into the slots' shared storage (``LoraSlots``)."""

    def __init__(self, base_layer: nn.Linear, max_rank: int, storage: torch.Tensor):
        super().__init__()
        self.base_layer = base_layer
        a_n, b_n = max_rank * base_layer.in_features, base_layer.out_features * max_rank
        if storage.numel() != self.numel(base_layer, max_rank):
            raise ValueError("slot storage of the wrong size")
        self.lora_A = nn.Parameter(storage[:a_n].view(max_rank, base_layer.in_features), requires_grad=False)
        self.lora_B = nn.Parameter(storage[a_n:a_n + b_n].view(base_layer.out_features, max_rank),
                                   requires_grad=False)
        self.register_buffer("lora_scaling", storage[a_n + b_n:].view(()))
        self.rank = 0   # columns of the slot in use; beyond them everything is zero

    @staticmethod
    def numel(base_layer: nn.Linear, max_rank: int) -> int:
        return max_rank * base_layer.in_features + base_layer.out_features * max_rank + 1

    def fill(self, mirror: torch.Tensor, a: torch.Tensor | None, b: torch.Tensor | None, scaling: float) -> None:
        """Write an adapter's A (r × in) and B (out × r) into ``mirror`` (this slot's region of
        the host mirror), zeroing what a previous, larger adapter left beyond r; ``None``
        empties the slot. The caller sends the mirror to the device."""
        max_rank, in_f = self.lora_A.shape
        out_f = self.lora_B.shape[0]
        a_n, b_n = max_rank * in_f, out_f * max_rank
        ma, mb = mirror[:a_n].view(max_rank, in_f), mirror[a_n:a_n + b_n].view(out_f, max_rank)
        r = 0 if a is None or b is None else a.shape[0]
        if r:
            ma[:r].copy_(a)
            mb[:, :r].copy_(b)
        if self.rank > r:
            ma[r:self.rank].zero_()
            mb[:, r:self.rank].zero_()
        mirror[a_n + b_n] = scaling if r else 0.0
        self.rank = r

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The same operations, in the same order, as PEFT's lora.Linear.forward.
        result = self.base_layer(x)
        result_dtype = result.dtype
        h = x if x.dtype == self.lora_A.dtype else x.to(self.lora_A.dtype)
        result = result + F.linear(F.linear(h, self.lora_A), self.lora_B) * self.lora_scaling
        return result.to(result_dtype)


class LoraSlots:
    """The slots of one model. Built once (``LoraSlots(model, geometry)`` replaces every
    targeted ``nn.Linear`` in place), then ``load`` copies an adapter in."""

    def __init__(self, model: nn.Module, geometry: SlotGeometry, dtype: torch.dtype | None = None):
        self.geometry = geometry
        self._model = model
        self.modules: dict[str, SlotLinear] = {}
        targets = [(path, m) for path, m in model.named_modules()
                   if path.rsplit(".", 1)[-1] in geometry.target_modules and isinstance(m, nn.Linear)]
        if not targets:
            raise ValueError(f"the model has no linear modules named {sorted(geometry.target_modules)}")
        first = targets[0][1].weight
        dtype = dtype or slot_dtype(first.dtype)
        sizes = [SlotLinear.numel(m, geometry.max_rank) for _, m in targets]
        # one device tensor for every slot, and its host mirror (pinned: one DMA transfer)
        self.storage = torch.zeros(sum(sizes), dtype=dtype, device=first.device)
        self._mirror: torch.Tensor | None = self.storage
        if first.device.type == "cuda":
            self._mirror = torch.zeros(sum(sizes), dtype=dtype, pin_memory=True)
            self.storage.copy_(self._mirror)   # the transfer's set-up happens now, not in a cold start
        self._regions: dict[str, tuple[int, int]] = {}
        offset = 0
        for (path, linear), n in zip(targets, sizes):
            slot = SlotLinear(linear, geometry.max_rank, self.storage[offset:offset + n])
            parent_path, _, child = path.rpartition(".")
            setattr(model.get_submodule(parent_path) if parent_path else model, child, slot)
            self.modules[path] = slot
            self._regions[path] = (offset, offset + n)
            offset += n

    def _fill(self, changes: dict[str, tuple[torch.Tensor | None, torch.Tensor | None, float]]) -> None:
        """Write ``changes`` (slot path → A, B, scaling) into the mirror, then send the span
        they cover to the device in one copy (a no-op where the mirror is the storage)."""
        touched = [p for p, (a, _, _) in changes.items() if a is not None or self.modules[p].rank]
        if not touched:
            return
        if self._mirror is None:   # released after an earlier load: the device holds the truth
            self._mirror = self.storage.to("cpu").pin_memory()
        for path in touched:
            start, end = self._regions[path]
            a, b, scaling = changes[path]
            self.modules[path].fill(self._mirror[start:end], a, b, scaling)
        if self._mirror is not self.storage:
            lo = min(self._regions[p][0] for p in touched)
            hi = max(self._regions[p][1] for p in touched)
            self.storage[lo:hi].copy_(self._mirror[lo:hi])
            torch.cuda.current_stream(self.storage.device).synchronize()   # the mirror may change again

    def release_mirror(self) -> None:
        """Give the host mirror's (pinned) memory back: a runtime loads one adapter only. A
        later load rebuilds it from the device."""
        if self._mirror is not self.storage:
            self._mirror = None

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for s in self.modules.values()
                   for t in (s.lora_A, s.lora_B, s.lora_scaling))

    def load(self, source: AdapterSource) -> SlotLoad:
        """Copy ``source``'s adapter into the slots. Everything is checked before the first
        byte is written: an adapter that does not fit raises ``AdapterDoesNotFit`` and leaves
        the slots as they were; corrupt weights raise ``AdapterFormatError``."""
        with source.buffer() as buf:
            records = parse_safetensors(buf)
            facts = adapter_facts(source.config, {n: (r.dtype, r.shape) for n, r in records.items()})
            fit = check_fit(facts, self.geometry)
            if not fit.fits:
                raise AdapterDoesNotFit(fit.reasons)
            wrong = [m.path for m in facts.modules
                     if m.path not in self.modules
                     or (self.modules[m.path].base_layer.in_features, self.modules[m.path].base_layer.out_features)
                     != (m.in_features, m.out_features)]
            if wrong:
                raise AdapterDoesNotFit((f"modules {wrong[:3]} do not match the model's layers",))
            keys = lora_module_keys(records)
            copied = 0
            changes: dict[str, tuple[torch.Tensor | None, torch.Tensor | None, float]] = {}
            for path in self.modules:
                key = keys.get(path)
                if key is None:
                    changes[path] = (None, None, 0.0)
                    continue
                ra, rb = records[f"{key}.lora_A.weight"], records[f"{key}.lora_B.weight"]
                changes[path] = (tensor_view(buf, ra), tensor_view(buf, rb), facts.scaling)
                copied += ra.nbytes + rb.nbytes
            with torch.no_grad():
                self._fill(changes)
            changes.clear()   # views of the buffer: gone before it is unmapped
        return SlotLoad(len(keys), facts.rank, facts.scaling, copied)

    def clear(self) -> None:
        with torch.no_grad():
            self._fill({path: (None, None, 0.0) for path in self.modules})

    def remove(self) -> None:
        """Put the original linear layers back (before PEFT's loader takes over the model)."""
        for path, slot in self.modules.items():
            parent_path, _, child = path.rpartition(".")
            setattr(self._model.get_submodule(parent_path) if parent_path else self._model, child, slot.base_layer)
        self.modules = {}

