"""The batch engine's memory admission as a pure function (``kv_budget``)."""
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


def need(rows: int, width: int, joiners: int, held: int = 0) -> float:
    return SAFETY_BYTES + (rows * width - held) * 1000 + joiners * width * (100 + 1000)


def test_joiners_fit_until_the_final_padded_cache_would_not() -> None:
    joining = [Row(0, 100)] * 4
    assert joiners_that_fit(GEO, [], joining, need(4, 100, 4)) == 4
    assert joiners_that_fit(GEO, [], joining, need(4, 100, 4) - 1) == 3
    assert joiners_that_fit(GEO, [], joining, need(2, 100, 2)) == 2


def test_a_wide_joiner_widens_every_row_and_running_rows_count_their_growth() -> None:
    running = [Row(50, 60), Row(50, 80)]            # 100 columns held, up to 160 at the end
    assert joiners_that_fit(GEO, running, [Row(0, 70)], need(3, 80, 1, held=100)) == 1
    # a joiner of 200 columns pads the running rows to 200 as well
    assert joiners_that_fit(GEO, running, [Row(0, 200)], need(3, 80, 1, held=100)) == 0
    assert joiners_that_fit(GEO, running, [Row(0, 200)], need(3, 200, 1, held=100)) == 1


def test_attention_scores_grow_with_the_square_of_the_prefill_width() -> None:
    geo = KvGeometry(1000, 100, score_bytes_per_square=10)
    # two rows padded to 100 columns (one held already), and for the prefill 100 × (activations,
    # scores of 100 columns, its own cache until merged)
    enough = SAFETY_BYTES + (2 * 100 - 1) * 1000 + 100 * (100 + 100 * 10 + 1000)
    assert joiners_that_fit(geo, [Row(1, 2)], [Row(0, 100)], enough) == 1
    assert joiners_that_fit(geo, [Row(1, 2)], [Row(0, 100)], enough - 1) == 0


def test_a_lone_request_always_gets_its_chance_but_not_beside_a_running_batch() -> None:
    assert joiners_that_fit(GEO, [], [Row(0, 10_000)], 0.0) == 1
    assert joiners_that_fit(GEO, [Row(5, 10)], [Row(0, 10_000)], 0.0) == 0
    assert joiners_that_fit(GEO, [], [], 1e12) == 0
