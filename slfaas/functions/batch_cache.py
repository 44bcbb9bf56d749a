"""The KV cache of a running batch: one cache for all its requests, rows aligned on the right.

Each row's padding sits at the front, masked out (attention mask 0), so every row's newest
token is in the last column and one decode step serves all rows at once. Requests join by
merging their (prefilled) cache in, the shorter side padded on the left with zeros; they
leave by selecting the remaining rows, after which columns that are padding in every row
are cut off. Padded keys and values get exactly zero attention weight, so a row computes
what it would compute alone. Only full-attention layers (``DynamicLayer``) can be padded
like this; ``supports_padding`` says whether a model's cache is made of them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


def supports_padding(config: Any) -> bool:
    """False for sliding-window or hybrid attention: their windows count padded columns."""
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    if getattr(text, "sliding_window", None) not in (None, 0) and getattr(text, "use_sliding_window", True):
        return False
    layer_types = getattr(text, "layer_types", None)
    return not layer_types or all(t == "full_attention" for t in layer_types)


def _pad_left(t: torch.Tensor, n: int, dim: int) -> torch.Tensor:
    if n == 0:
        return t
    shape = list(t.shape)
    shape[dim] = n
    return torch.cat([t.new_zeros(shape), t], dim=dim)


def _layers(cache: DynamicCache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    out = []
    for layer in cache.layers:
        if type(layer) is not DynamicLayer or not layer.is_initialized:
            raise TypeError(f"cannot batch a cache layer of type {type(layer).__name__}")
        out.append((layer.keys, layer.values))
    return out


@dataclass
class PaddedBatch:
    """``cache`` (batch × heads × columns × dim per layer) and ``mask`` (batch × columns)."""

    cache: DynamicCache
    mask: torch.Tensor

    @property
    def rows(self) -> int:
        return int(self.mask.shape[0])

    def decode_mask(self) -> torch.Tensor:
        """The mask for one more column (the decode step's tokens), kept for the next step."""
        self.mask = torch.cat([self.mask, self.mask.new_ones((self.rows, 1))], dim=1)
        return self.mask

    def rollback(self, columns: int) -> None:
        """Back to ``columns`` columns: undoes a decode step that failed part-way (its mask
        column added, some layers' keys and values appended, the others not)."""
        for layer in self.cache.layers:
            if layer.keys.shape[-2] > columns:
                layer.keys, layer.values = layer.keys[..., :columns, :], layer.values[..., :columns, :]
        self.mask = self.mask[:, :columns]

    def merge(self, other: "PaddedBatch") -> "PaddedBatch":
        """This batch's rows, then ``other``'s, right-aligned."""
        width = max(self.mask.shape[1], other.mask.shape[1])
        pa, pb = width - self.mask.shape[1], width - other.mask.shape[1]
        data = [(torch.cat([_pad_left(ka, pa, -2), _pad_left(kb, pb, -2)]),
                 torch.cat([_pad_left(va, pa, -2), _pad_left(vb, pb, -2)]))
                for (ka, va), (kb, vb) in zip(_layers(self.cache), _layers(other.cache))]
        mask = torch.cat([_pad_left(self.mask, pa, 1), _pad_left(other.mask, pb, 1)])
        return PaddedBatch(DynamicCache(ddp_cache_data=data), mask)

    def without_last_row(self) -> "PaddedBatch | None":
        """All rows but the last, as views (allocates nothing: for when memory ran out)."""
        n = self.rows - 1
        if n == 0:
            return None
        for layer in self.cache.layers:
            layer.keys, layer.values = layer.keys[:n], layer.values[:n]
        self.mask = self.mask[:n]
        return self

    def select(self, rows: list[int]) -> "PaddedBatch | None":
        """Only ``rows`` (in that order), without the columns that are padding in all of them;
        None when no row is left. In place, a layer at a time: the copy needs one layer's room."""
        if not rows:
            return None
        index = torch.tensor(rows, device=self.mask.device)
        mask = self.mask.index_select(0, index)
        start = int(mask.any(dim=0).nonzero()[0])
        for layer in self.cache.layers:
            layer.keys = layer.keys.index_select(0, index)[..., start:, :]
            layer.values = layer.values.index_select(0, index)[..., start:, :]
        self.mask = mask[:, start:]
        return self
