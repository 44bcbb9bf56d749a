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
only: an adapter with a variant (DoRA and the like) or a bias on B makes the model fall back
to PEFT's loop, as does a pass naming an adapter with nothing stacked. The stacks copy the
adapters' weights (in their dtype, padded to the largest rank per layer) and are rebuilt
whole when the set of adapters changes.
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
    deleted); inside ``rows(names)`` their mixed-batch forward gathers, elsewhere PEFT's runs.
    The stacks are copies: an adapter's weights or scale changed in place (PEFT's
    ``set_scale``) are seen after the next ``refresh`` only."""

    def __init__(self, peft_model: Any):
        self._model = peft_model
        self._snapshot: tuple[dict[str, int], dict[int, _Stack]] = ({}, {})   # name → slot, id(layer) → stack
        self._local = threading.local()           # the pass in progress: its snapshot and row indices
        self.gathered_calls = 0                   # layers that ran gathered (tests read it)
        self.refresh()

    def refresh(self) -> None:
        """Restack after the set of adapters changed (and patch layers PEFT added for it). What
        this cannot stack exactly (a variant such as DoRA, a bias on B) turns gathering off:
        PEFT's loop runs."""
        from peft.tuners.lora.layer import Linear

        self._snapshot = ({}, {})                 # PEFT's loop while restacking, and for good after a failure
        layers = [m for m in self._model.modules() if isinstance(m, Linear)]
        names = sorted({n for m in layers for n in m.lora_A.keys()})
        if not names or not all(_plain(m) for m in layers):
            return
        for m in layers:
            if "_slfaas_original" not in m.__dict__:
                m._slfaas_original = m._mixed_batch_forward
                m._mixed_batch_forward = _bound(self, m)
        stacks = {id(m): _stack(m, names) for m in layers if any(n in m.lora_A for n in names)}
        self._snapshot = ({n: i for i, n in enumerate(names)}, stacks)   # published whole

    @property
    def active(self) -> bool:
        return bool(self._snapshot[1])

    @contextmanager
    def rows(self, adapter_names: Sequence[str], device: Any) -> Iterator[None]:
        """One pass whose row i runs adapter ``adapter_names[i]``; a name with nothing stacked
        (not a LoRA linear's adapter, PEFT's ``__base__``) leaves the pass to PEFT's loop."""
        import torch

        index, stacks = self._snapshot
        previous = getattr(self._local, "pass_", None)
        if stacks and all(n in index for n in adapter_names):
            ids = torch.tensor([index[n] for n in adapter_names], dtype=torch.long)
            self._local.pass_ = (stacks, {str(device): ids.to(device)}, ids)
        else:
            self._local.pass_ = None
        try:
            yield
        finally:
            self._local.pass_ = previous

    def forward(self, layer: Any, x: Any, *args: Any, adapter_names: list[str], **kwargs: Any) -> Any:
        import torch

        pass_ = getattr(self._local, "pass_", None)
        stack = pass_[0].get(id(layer)) if pass_ is not None else None
        if stack is None or x.dim() != 3 or x.shape[0] != pass_[2].shape[0]:
            # a layer none of the pass's adapters adapts, or a pass left to PEFT
            return layer._slfaas_original(x, *args, adapter_names=adapter_names, **kwargs)
        by_device, host_ids = pass_[1], pass_[2]
        ids = by_device.get(str(stack.a.device))
        if ids is None:                            # a model spread over devices: the ids go to each
            ids = by_device[str(stack.a.device)] = host_ids.to(stack.a.device)
        kwargs.pop("alora_offsets", None)          # a variant's argument: never set without variants
        result = layer.base_layer(x, *args, **kwargs)
        a, b = stack.a.index_select(0, ids), stack.b.index_select(0, ids)
        h = torch.bmm(x.to(a.dtype), a.transpose(1, 2))                         # rows × tokens × rank
        delta = torch.bmm(h, b.transpose(1, 2)) * stack.scale.index_select(0, ids).view(-1, 1, 1)
        self.gathered_calls += 1
        return result + delta.to(result.dtype)


def _plain(layer: Any) -> bool:
    """Plain LoRA only: no variant (DoRA, aLoRA…) and no bias on B, which the stacks leave out."""
    return not getattr(layer, "lora_variant", None) and all(
        getattr(b, "bias", None) is None for b in layer.lora_B.values())


def _stack(layer: Any, names: Sequence[str]) -> _Stack:
    """The layer's A, B and scale of every adapter in ``names`` (zeros where it has none),
    ranks zero-padded to the largest."""
    import torch

    held = [n for n in names if n in layer.lora_A]
    rank = max(layer.lora_A[n].weight.shape[0] for n in held)
    ref = layer.lora_A[held[0]].weight
    a = torch.zeros((len(names), rank, layer.in_features), dtype=ref.dtype, device=ref.device)
    b = torch.zeros((len(names), layer.out_features, rank), dtype=ref.dtype, device=ref.device)
    scale = torch.zeros(len(names), dtype=ref.dtype, device=ref.device)
    with torch.no_grad():
        for i, n in enumerate(names):
            if n in layer.lora_A:
                r = layer.lora_A[n].weight.shape[0]
                a[i, :r] = layer.lora_A[n].weight.detach()
                b[i, :, :r] = layer.lora_B[n].weight.detach()
                scale[i] = float(layer.scaling[n])
    return _Stack(a, b, scale)


def _bound(owner: GatheredLora, layer: Any) -> Any:
    def mixed_batch_forward(x: Any, *args: Any, adapter_names: list[str], **kwargs: Any) -> Any:
        return owner.forward(layer, x, *args, adapter_names=adapter_names, **kwargs)
    return mixed_batch_forward
