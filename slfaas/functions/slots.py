"""LoRA slots: a runtime's LoRA layers built empty before any function needs them, and filled
for one function by copying its adapter's tensors in.

Each slot module wraps one of the backbone's linear layers and computes PEFT's unmerged LoRA,
``base(x) + B(A(x)) · s``, with A (max_rank × in), B (out × max_rank) and s allocated once.
An adapter of rank r ≤ max_rank goes into A[:r] and B[:, :r], the rest stays zero: the
padded products add exact zeros, so outputs equal PEFT's. Loading only ever writes into the
existing tensors (``copy_``, ``zero_``, ``fill_``), never replaces them, so their device
addresses never change: a forward captured as a CUDA graph while the runtime pre-warms stays
valid after specialisation. The scaling is a device tensor for the same reason.
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
    """A linear layer of the backbone (borrowed, never written) plus one LoRA slot."""

    def __init__(self, base_layer: nn.Linear, max_rank: int, dtype: torch.dtype):
        super().__init__()
        self.base_layer = base_layer
        device = base_layer.weight.device
        self.lora_A = nn.Parameter(torch.zeros(max_rank, base_layer.in_features, dtype=dtype, device=device),
                                   requires_grad=False)
        self.lora_B = nn.Parameter(torch.zeros(base_layer.out_features, max_rank, dtype=dtype, device=device),
                                   requires_grad=False)
        self.register_buffer("lora_scaling", torch.zeros((), dtype=dtype, device=device))
        self.rank = 0   # columns of the slot in use; beyond them everything is zero

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The same operations, in the same order, as PEFT's lora.Linear.forward.
        result = self.base_layer(x)
        result_dtype = result.dtype
        h = x if x.dtype == self.lora_A.dtype else x.to(self.lora_A.dtype)
        result = result + F.linear(F.linear(h, self.lora_A), self.lora_B) * self.lora_scaling
        return result.to(result_dtype)

    def fill(self, a: torch.Tensor | None, b: torch.Tensor | None, scaling: float) -> None:
        """Copy an adapter's A (r × in) and B (out × r) in, zeroing what a previous, larger
        adapter left beyond r; ``None`` empties the slot."""
        r = 0 if a is None or b is None else a.shape[0]
        if r:
            self.lora_A[:r].copy_(a)
            self.lora_B[:, :r].copy_(b)
        if self.rank > r:
            self.lora_A[r:self.rank].zero_()
            self.lora_B[:, r:self.rank].zero_()
        self.lora_scaling.fill_(scaling if r else 0.0)
        self.rank = r


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
        for path, linear in targets:
            slot = SlotLinear(linear, geometry.max_rank, dtype or slot_dtype(linear.weight.dtype))
            parent_path, _, child = path.rpartition(".")
            setattr(model.get_submodule(parent_path) if parent_path else model, child, slot)
            self.modules[path] = slot

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
            with torch.no_grad():
                for path, slot in self.modules.items():
                    key = keys.get(path)
                    if key is None:
                        if slot.rank:
                            slot.fill(None, None, 0.0)
                        continue
                    ra, rb = records[f"{key}.lora_A.weight"], records[f"{key}.lora_B.weight"]
                    a, b = tensor_view(buf, ra), tensor_view(buf, rb)
                    slot.fill(a, b, facts.scaling)
                    copied += ra.nbytes + rb.nbytes
                    del a, b   # views of the buffer: gone before it is unmapped
        return SlotLoad(len(keys), facts.rank, facts.scaling, copied)

    def clear(self) -> None:
        with torch.no_grad():
            for slot in self.modules.values():
                if slot.rank:
                    slot.fill(None, None, 0.0)

    def remove(self) -> None:
        """Put the original linear layers back (before PEFT's loader takes over the model)."""
        for path, slot in self.modules.items():
            parent_path, _, child = path.rpartition(".")
            setattr(self._model.get_submodule(parent_path) if parent_path else self._model, child, slot.base_layer)
        self.modules = {}

