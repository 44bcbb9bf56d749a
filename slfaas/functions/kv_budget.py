"""How many waiting requests a running batch can take in without running out of device memory.

A batch's KV cache is padded: every row holds as many columns as the widest, and grows by one
column per decode step until its requests finish. So before requests join, the batch
engine checks that the cache at its final width (the longest prompt plus output still to
come, over running and joining rows alike) and the prefill's activations fit in the memory
the device has free plus what this process holds unused. On a device shared by several
processes the check can still race with the others: a pass that runs out of memory anyway is
handled by the engine (the joiners wait, the batch goes on), never a crash.

IO-free: the engine measures the headroom and passes it in.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

MIB = 1024 * 1024
SAFETY_BYTES = 512 * MIB        # cuBLAS workspaces, the allocator's rounding, the logits


@dataclass(frozen=True)
class KvGeometry:
    """Bytes per cached token (all layers, keys and values), per prefilled token of transient
    activations (the MLP's intermediate and the attention's projections), and per row and
    squared prefill width of attention scores (a padded batch's explicit mask may send
    attention to the kernel that materialises them, in the model's dtype and in fp32)."""

    kv_bytes_per_token: int
    activation_bytes_per_token: int
    score_bytes_per_square: int = 0

    @classmethod
    def of(cls, config: Any, dtype_bytes: int) -> "KvGeometry":
        text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
        heads = int(text.num_attention_heads)
        kv_heads = int(getattr(text, "num_key_value_heads", None) or heads)
        hidden = int(text.hidden_size)
        head_dim = int(getattr(text, "head_dim", None) or hidden // heads)
        layers = int(text.num_hidden_layers)
        intermediate = int(getattr(text, "intermediate_size", None) or 4 * hidden)
        return cls(kv_bytes_per_token=layers * 2 * kv_heads * head_dim * dtype_bytes,
                   activation_bytes_per_token=(4 * hidden + 3 * intermediate) * dtype_bytes,
                   score_bytes_per_square=heads * (dtype_bytes + 4))


@dataclass(frozen=True)
class Row:
    """A request as the budget sees it: the columns it holds now and its final length."""

    width_now: int       # columns it occupies today (0 for a request not prefilled yet)
    final_tokens: int    # prompt + every output token it may still produce


def joiners_that_fit(geometry: KvGeometry, running: Sequence[Row], joining: Sequence[Row],
                     headroom_bytes: float) -> int:
    """The most of ``joining`` (a prefix, in order) whose prefill and final cache fit in
    ``headroom_bytes`` beside the running rows' growth. At least one when nothing runs: a
    lone request always gets its chance (the engine handles an out-of-memory pass)."""
    held_columns = max((r.width_now for r in running), default=0) * len(running)
    fit = 0
    for j in range(1, len(joining) + 1):
        rows = [*running, *joining[:j]]
        final_columns = max(r.final_tokens for r in rows) * len(rows)
        grow = (final_columns - held_columns) * geometry.kv_bytes_per_token
        # the prefill's activations, bounded by the joiners' final length (their prompt is shorter)
        width = max(r.final_tokens for r in joining[:j])
        # and the joiners' own cache, alive beside the merged one until the merge is done
        transient = j * width * (geometry.activation_bytes_per_token + width * geometry.score_bytes_per_square
                                 + geometry.kv_bytes_per_token)
        if grow + transient + SAFETY_BYTES > headroom_bytes:
            break
        fit = j
    return max(fit, 0 if running else min(1, len(joining)))
