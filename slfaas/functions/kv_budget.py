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
    """A request as the budget sees it: the columns it holds now, its final length, and (a
    joiner) its prompt."""

    width_now: int       # columns it occupies today (0 for a request not prefilled yet)
    final_tokens: int    # the columns it ends with: prompt + every output token it may still produce
    prompt_tokens: int = 0


def joiners_that_fit(geometry: KvGeometry, running: Sequence[Row], joining: Sequence[Row],
                     headroom_bytes: float) -> int:
    """The most of ``joining`` (a prefix, in order) that fit in ``headroom_bytes`` (new
    allocations only: what the running rows hold is allocated already). Two moments count,
    the larger of them: the merge, when the merged cache at the common width exists beside
    the running one and the joiners' own; and the end, when every row is padded to the
    longest final length. Plus the prefill's activations and attention scores. At least one
    when nothing runs: a lone request always gets its chance (the engine handles a pass that
    runs out of memory)."""
    n = len(running)
    width = max((r.width_now for r in running), default=0)
    fit = 0
    for j in range(1, len(joining) + 1):
        rows = [*running, *joining[:j]]
        prompt = max(r.prompt_tokens or r.final_tokens for r in joining[:j])
        at_merge = (n + j) * max(width, prompt) + j * prompt
        at_end = (n + j) * max(r.final_tokens for r in rows) - n * width
        prefill = j * prompt * (geometry.activation_bytes_per_token + prompt * geometry.score_bytes_per_square)
        if max(at_merge, at_end) * geometry.kv_bytes_per_token + prefill + SAFETY_BYTES > headroom_bytes:
            break
        fit = j
    return max(fit, 0 if running else min(1, len(joining)))
