"""The batch engine's memory admission as a pure function (``kv_budget``), on hand-worked
figures: 1,000 bytes of cache and 100 of activations per token, no attention scores unless
said."""
from __future__ import annotations

from types import SimpleNamespace

from slfaas.functions.kv_budget import SAFETY_BYTES, KvGeometry, Row, joiners_that_fit

LLAMA_7B = SimpleNamespace(num_attention_heads=32, num_key_value_heads=32, hidden_size=4096, num_hidden_layers=32,
                           intermediate_size=11008)
GEO = KvGeometry(kv_bytes_per_token=1000, activation_bytes_per_token=100)


def test_geometry_of_a_llama_7b_shape_in_fp16() -> None:
    g = KvGeometry.of(LLAMA_7B, 2)
    assert g.kv_bytes_per_token == 32 * 2 * 4096 * 2          # 512 KiB per token
    assert g.activation_bytes_per_token == (4 * 4096 + 3 * 11008) * 2
    assert g.score_bytes_per_square == 32 * (2 + 4)
    grouped = KvGeometry.of(SimpleNamespace(**{**vars(LLAMA_7B), "num_key_value_heads": 8}), 2)
    assert grouped.kv_bytes_per_token == g.kv_bytes_per_token // 4


def test_into_an_empty_batch_the_end_counts() -> None:
    # 4 joiners of prompt 60, final 100: at the merge 4·60 + 4·60 = 480 columns, at the end
    # 400, so 480 · 1000 + the prefill 4 · 60 · 100 = 504,000 bytes
    joining = [Row(0, 100, 60)] * 4
    assert joiners_that_fit(GEO, [], joining, SAFETY_BYTES + 504_000) == 4
    assert joiners_that_fit(GEO, [], joining, SAFETY_BYTES + 503_999) == 3
    # 2 of them: 240 columns at the merge, 12,000 bytes of prefill
    assert joiners_that_fit(GEO, [], joining, SAFETY_BYTES + 252_000) == 2


def test_a_long_prompt_joining_a_nearly_done_batch_counts_the_merge() -> None:
    """3 rows at width 1,000 with 10 tokens left; a joiner of 1,000 prompt tokens and 10 out.
    At the end 4 · 1,010 − 3,000 = 1,040 new columns, but the merge allocates 4 · 1,000 for the
    merged cache plus the joiner's own 1,000 beside the running 3,000: 5,000."""
    running = [Row(1000, 1010)] * 3
    need = SAFETY_BYTES + 5000 * 1000 + 1000 * 100
    assert joiners_that_fit(GEO, running, [Row(0, 1010, 1000)], need) == 1
    assert joiners_that_fit(GEO, running, [Row(0, 1010, 1000)], need - 1) == 0


def test_a_long_output_counts_at_the_end_not_in_the_prefill() -> None:
    """1 row at width 10 ending at 20; a joiner of prompt 10 and 4,000 tokens out: at the end
    2 · 4,010 − 10 = 8,010 new columns; its prefill only 10 tokens wide."""
    geo = KvGeometry(1000, 100, score_bytes_per_square=10)
    need = SAFETY_BYTES + 8010 * 1000 + 10 * (100 + 10 * 10)
    assert joiners_that_fit(geo, [Row(10, 20)], [Row(0, 4010, 10)], need) == 1
    assert joiners_that_fit(geo, [Row(10, 20)], [Row(0, 4010, 10)], need - 1) == 0


def test_attention_scores_grow_with_the_square_of_the_prompt() -> None:
    geo = KvGeometry(1000, 100, score_bytes_per_square=10)
    # beside one row of width 1: the merged 2 · 100 columns and the joiner's own 100; the
    # prefill 100 · (100 + 100 · 10)
    need = SAFETY_BYTES + 300 * 1000 + 100 * (100 + 100 * 10)
    assert joiners_that_fit(geo, [Row(1, 2)], [Row(0, 100, 100)], need) == 1
    assert joiners_that_fit(geo, [Row(1, 2)], [Row(0, 100, 100)], need - 1) == 0
    # ten times the prompt: a hundred times the scores
    wide = SAFETY_BYTES + 3000 * 1000 + 1000 * (100 + 1000 * 10)
    assert joiners_that_fit(geo, [Row(1, 2)], [Row(0, 1000, 1000)], wide) == 1
    assert joiners_that_fit(geo, [Row(1, 2)], [Row(0, 1000, 1000)], wide - 1) == 0


def test_a_lone_request_always_gets_its_chance_but_not_beside_a_running_batch() -> None:
    assert joiners_that_fit(GEO, [], [Row(0, 10_000, 5_000)], 0.0) == 1
    assert joiners_that_fit(GEO, [Row(5, 10)], [Row(0, 10_000, 5_000)], 0.0) == 0
    assert joiners_that_fit(GEO, [], [], 1e12) == 0


class _FakeCuda:
    """torch.cuda as device_headroom reads it: 10 GiB free on the device, this process's
    allocator holding 3 GiB of which 2 GiB in use."""

    GIB = 2**30

    def mem_get_info(self, _device: object) -> tuple[int, int]:
        return 10 * self.GIB, 80 * self.GIB

    def memory_reserved(self, _device: object) -> int:
        return 3 * self.GIB

    def memory_allocated(self, _device: object) -> int:
        return 2 * self.GIB


def test_the_headroom_is_the_free_memory_under_the_instances_bound() -> None:
    import types

    from slfaas.functions.device_memory import device_headroom

    torch = types.SimpleNamespace(cuda=_FakeCuda())
    cuda = types.SimpleNamespace(type="cuda")
    gib = _FakeCuda.GIB
    assert device_headroom(torch, cuda)() == 11 * gib               # free + cached unused
    assert device_headroom(torch, cuda, 5 * gib)() == 3 * gib       # the bound less what is in use
    assert device_headroom(torch, cuda, 20 * gib)() == 11 * gib     # a loose bound: the device's
    assert device_headroom(torch, cuda, 1 * gib)() == -1 * gib      # over it already: nothing joins
    assert device_headroom(torch, types.SimpleNamespace(type="cpu"), gib)() is None
    # a private backbone the process holds already is not counted against the bound
    assert device_headroom(torch, cuda, 1 * gib, beside_bytes=2 * gib)() == 1 * gib


def test_the_allocator_is_held_to_the_bound_beside_a_private_backbone() -> None:
    import types

    from slfaas.functions.device_memory import bound_allocator

    set_to: list[tuple[float, object]] = []
    cuda = _FakeCuda()
    cuda.get_device_properties = lambda _d: types.SimpleNamespace(total_memory=80 * _FakeCuda.GIB)  # type: ignore[attr-defined]
    cuda.set_per_process_memory_fraction = lambda f, d: set_to.append((f, d))  # type: ignore[attr-defined]
    torch, dev = types.SimpleNamespace(cuda=cuda), types.SimpleNamespace(type="cuda")
    gib = _FakeCuda.GIB
    assert bound_allocator(torch, dev, 8 * gib) and set_to[-1] == (0.1, dev)
    assert bound_allocator(torch, dev, 8 * gib, beside_bytes=16 * gib) and set_to[-1] == (0.3, dev)
    assert bound_allocator(torch, dev, 800 * gib) and set_to[-1] == (1.0, dev)     # never above the device
    assert not bound_allocator(torch, dev, None) and not bound_allocator(torch, types.SimpleNamespace(type="cpu"), gib)
    assert len(set_to) == 3
