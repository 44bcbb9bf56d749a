"""Code zips an attacker sends: each is refused with InvalidParameter before anything stays on
disk (no 500, no function that is Active and fails at every invoke), and AWS's 250 MB limit
on unzipped code holds."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from slfaas.errors import InvalidParameter
from slfaas.faas.code import MAX_UNZIPPED_BYTES, CodeStore, check_adapter_fits
from tests.bad_inputs import BAD_ZIP_CASES, adapter_files, bad_zips, huge_unzipped, with_config

CASES = sorted(BAD_ZIP_CASES)


@pytest.fixture(scope="module")
def zips(tiny_assets) -> dict[str, bytes]:  # type: ignore[no-untyped-def]
    return bad_zips(tiny_assets.adapter_a)


@pytest.fixture
def store(tmp_path: Path) -> CodeStore:
    return CodeStore(tmp_path / "code", in_use=lambda sha256_hex: False)


def test_every_case_is_listed(zips) -> None:  # type: ignore[no-untyped-def]
    assert sorted(zips) == CASES


@pytest.mark.parametrize("case", CASES)
def test_bad_code_is_refused_and_leaves_nothing(store, tiny_assets, zips, case) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidParameter) as exc_info:
        with store.hold(zips[case]) as pkg:
            check_adapter_fits(pkg.dir_path, tiny_assets.base)
    assert 0 < len(str(exc_info.value)) < 1000   # one readable line, not the input echoed back
    assert list(store.root.iterdir()) == []


def test_unzipped_code_over_250_mb_is_refused_unextracted(store, tiny_assets) -> None:  # type: ignore[no-untyped-def]
    raw = huge_unzipped(251, adapter_files(tiny_assets.adapter_a))
    assert len(raw) < 1 << 20
    with pytest.raises(InvalidParameter, match=f"Unzipped size must be smaller than {MAX_UNZIPPED_BYTES} bytes"):
        with store.hold(raw):
            pass
    assert MAX_UNZIPPED_BYTES == 262_144_000
    assert list(store.root.iterdir()) == []


@pytest.mark.parametrize("targets", [["q_proj"], ["self_attn.q_proj", "not_there"], "all-linear",
                                     r".*\.(q_proj|v_proj|o_proj|down_proj)", None])
def test_targets_the_base_has_are_accepted(store, tiny_assets, targets) -> None:  # type: ignore[no-untyped-def]
    with store.hold(with_config(tiny_assets.adapter_a, target_modules=targets)) as pkg:
        check_adapter_fits(pkg.dir_path, tiny_assets.base)


def test_a_catastrophic_target_pattern_is_cut_short(store, tiny_assets) -> None:  # type: ignore[no-untyped-def]
    """A regex that backtracks exponentially must not hold a control-plane thread."""
    raw = with_config(tiny_assets.adapter_a, target_modules=r"(.|..)+(\d\d\d|\W\W)")  # ~0.5 s per name, doubling per character
    t0 = time.monotonic()
    with pytest.raises(InvalidParameter, match="target_modules pattern .* is not usable"):
        with store.hold(raw) as pkg:
            check_adapter_fits(pkg.dir_path, tiny_assets.base)
    assert time.monotonic() - t0 < 30


def test_rank_pattern_ranks_are_accepted(store, tiny_assets) -> None:  # type: ignore[no-untyped-def]
    raw = with_config(tiny_assets.adapter_a, r=4, rank_pattern={"q_proj": 8, "v_proj": 8, "o_proj": 8,
                                                                  "down_proj": 8})
    with store.hold(raw) as pkg:
        check_adapter_fits(pkg.dir_path, tiny_assets.base)
    with pytest.raises(InvalidParameter, match="rank_pattern"):
        with store.hold(with_config(tiny_assets.adapter_a, rank_pattern={"q_proj": 2.5})):
            pass
