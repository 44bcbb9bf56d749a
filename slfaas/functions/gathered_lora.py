"""Several adapters in one forward pass, one per row, by gathering: every LoRA linear of a
PEFT model adds x·Aᵣ·Bᵣ·sᵣ for each row r with that row's adapter's A, B and scale, taken
from weights stacked once per set of loaded adapters (two batched GEMMs and a few gathers
per layer).

PEFT's own mixed-batch forward (``adapter_names=[...]``) loops over the adapters present in
the batch in every LoRA layer: the rows of each adapter gathered by indices built on the
host, two small GEMMs, a scatter back, so a step of 16 adapters costs hundreds of small
kernels and host-to-device copies per layer. Here the row → adapter indices go to the device
once per pass. Ranks differ between adapters: the stacks are zero-padded to the largest (a
zero column adds nothing); a layer an adapter does not adapt holds zeros for it. Plain LoRA
only: an adapter with a variant (DoRA and the like) makes the model fall back to PEFT's loop.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Sequence


@dataclass(frozen=True)
class _Stack:
    a: Any          # adapters × rank × in
    b: Any          # adapters × out × rank
    scale: Any      # adapters


class GatheredLora:
    """Patches the LoRA linears of ``peft_model`` (``refresh`` after adapters were loaded or
    deleted); inside ``rows(names)`` their mixed-batch forward gathers, elsewhere PEFT's runs."""

    def __init__(self, peft_model: Any):
        self._model = peft_model
        self._names: tuple[str, ...] = ()
        self._stacks: dict[int, _Stack] = {}      # id(module) → its stacked weights
        self._local = threading.local()           # the row → adapter indices of the pass in progress
        self.gathered_calls = 0                   # layers that ran gathered (tests read it)
        self.refresh()

    def refresh(self) -> None:
        """Restack after the set of adapters changed (and patch layers PEFT added for it)."""
        import torch
        from peft.tuners.lora.layer import Linear

        layers = [m for m in self._model.modules() if isinstance(m, Linear)]
        names = sorted({n for m in layers for n in m.lora_A.keys()})
        self._stacks = {}
        self._names = tuple(names)
        if not names or any(getattr(m, "lora_variant", None) for m in layers):
            return                                 # nothing loaded, or a variant: PEFT's loop
        for m in layers:
            if "_slfaas_original" not in m.__dict__:
                m._slfaas_original = m._mixed_batch_forward
                m._mixed_batch_forward = _bound(self, m)
            rank = max(m.lora_A[n].weight.shape[0] for n in names if n in m.lora_A)
            ref = next(m.lora_A[n].weight for n in names if n in m.lora_A)
            a = torch.zeros((len(names), rank, m.in_features), dtype=ref.dtype, device=ref.device)
            b = torch.zeros((len(names), m.out_features, rank), dtype=ref.dtype, device=ref.device)
            scale = torch.zeros(len(names), dtype=ref.dtype, device=ref.device)
            for i, n in enumerate(names):
                if n in m.lora_A:
                    r = m.lora_A[n].weight.shape[0]
                    a[i, :r] = m.lora_A[n].weight.detach()
                    b[i, :, :r] = m.lora_B[n].weight.detach()
                    scale[i] = float(m.scaling[n])
            self._stacks[id(m)] = _Stack(a, b, scale)

    @property
    def active(self) -> bool:
        return bool(self._stacks)

    @contextmanager
    def rows(self, adapter_names: Sequence[str], device: Any) -> Iterator[None]:
        """One pass whose row i runs adapter ``adapter_names[i]`` (each one loaded)."""
        import torch

        if not self._stacks:
            yield
            return
        index = {n: i for i, n in enumerate(self._names)}
        self._local.ids = torch.tensor([index[n] for n in adapter_names], dtype=torch.long, device=device)
        try:
            yield
        finally:
            self._local.ids = None

    def forward(self, layer: Any, x: Any, *args: Any, adapter_names: list[str], **kwargs: Any) -> Any:
        import torch

        ids = getattr(self._local, "ids", None)
        stack = self._stacks.get(id(layer))
        if ids is None or stack is None or x.dim() != 3 or x.shape[0] != ids.shape[0]:
            return layer._slfaas_original(x, *args, adapter_names=adapter_names, **kwargs)
        kwargs.pop("alora_offsets", None)          # a variant's argument: never set without variants
        result = layer.base_layer(x, *args, **kwargs)
        a, b = stack.a.index_select(0, ids), stack.b.index_select(0, ids)
        h = torch.bmm(x.to(a.dtype), a.transpose(1, 2))                         # rows × tokens × rank
        delta = torch.bmm(h, b.transpose(1, 2)) * stack.scale.index_select(0, ids).view(-1, 1, 1)
        self.gathered_calls += 1
        return result + delta.to(result.dtype)


def _bound(owner: GatheredLora, layer: Any) -> Any:
    def mixed_batch_forward(x: Any, *args: Any, adapter_names: list[str], **kwargs: Any) -> Any:
        return owner.forward(layer, x, *args, adapter_names=adapter_names, **kwargs)
    return mixed_batch_forward
