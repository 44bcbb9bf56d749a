"""Alias names, routing configurations and the routing choice (IO-free)."""
from __future__ import annotations

import random

import pytest

from slfaas.errors import InvalidParameter
from slfaas.faas.aliases import (AliasRouter, check_routing, is_version, parse_routing_config, pick_version,
                                 validate_alias_name, validate_version_ref)


@pytest.mark.parametrize("name", ["prod", "live-2", "a_b", "x" * 128, "v1"])
def test_valid_alias_names(name: str) -> None:
    assert validate_alias_name(name) == name


@pytest.mark.parametrize("name", ["", "1", "007", "has space", "x" * 129, "$LATEST", None, 5, "a:b"])
def test_invalid_alias_names(name) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidParameter):
        validate_alias_name(name)


def test_version_refs() -> None:
    assert validate_version_ref("$LATEST") == "$LATEST" and validate_version_ref("12") == "12"
    for bad in ("latest", "1.0", "", None, 3, "prod"):
        with pytest.raises(InvalidParameter):
            validate_version_ref(bad)
    assert is_version("3") and not is_version("$LATEST") and not is_version("prod")


def test_parse_routing_config() -> None:
    assert parse_routing_config(None) == {}
    assert parse_routing_config({}) == {}
    assert parse_routing_config({"AdditionalVersionWeights": {}}) == {}
    assert parse_routing_config({"AdditionalVersionWeights": {"2": 0.2}}) == {"2": 0.2}
    assert parse_routing_config({"AdditionalVersionWeights": {"2": 1}}) == {"2": 1.0}
    for bad in ("x", {"AdditionalVersionWeights": [1]}, {"AdditionalVersionWeights": {"prod": 0.5}},
                {"AdditionalVersionWeights": {"2": 1.5}}, {"AdditionalVersionWeights": {"2": -0.1}},
                {"AdditionalVersionWeights": {"2": "0.5"}}, {"AdditionalVersionWeights": {"2": True}},
                {"AdditionalVersionWeights": {"2": float("nan")}},
                {"AdditionalVersionWeights": {"2": 0.1, "3": 0.1}}):   # AWS: at most two versions per alias
        with pytest.raises(InvalidParameter):
            parse_routing_config(bad)


def test_check_routing_rules() -> None:
    check_routing("1", {})
    check_routing("$LATEST", {})
    check_routing("1", {"2": 0.5})
    with pytest.raises(InvalidParameter, match=r"\$LATEST"):
        check_routing("$LATEST", {"2": 0.5})
    with pytest.raises(InvalidParameter, match="already included"):
        check_routing("2", {"2": 0.5})


def test_pick_version_edges() -> None:
    weights = {"2": 0.2}
    assert pick_version("1", weights, 0.0) == "2"
    assert pick_version("1", weights, 0.1999) == "2"
    assert pick_version("1", weights, 0.2) == "1"
    assert pick_version("1", weights, 0.9999) == "1"
    assert pick_version("1", {}, 0.0) == "1"
    assert pick_version("1", {"2": 0.0}, 0.0) == "1"    # weight 0: never
    assert pick_version("1", {"2": 1.0}, 0.9999) == "2"  # weight 1: always


@pytest.mark.parametrize("weight", [0.2, 0.5, 0.05])
def test_router_split_converges(weight: float) -> None:
    router = AliasRouter(seed=1234)
    n = 20_000
    hits = sum(router.choose("1", {"2": weight}) == "2" for _ in range(n))
    assert abs(hits / n - weight) < 0.01


def test_router_split_within_5_points_for_1000_draws_nearly_always() -> None:
    """The acceptance bound (±5 points over 1,000 invocations) is > 3 standard deviations
    (sd = sqrt(0.2·0.8/1000) = 1.26 points), so it holds for almost every seed."""
    failures = 0
    for seed in range(200):
        rng = random.Random(seed)
        hits = sum(pick_version("1", {"2": 0.2}, rng.random()) == "2" for _ in range(1000))
        failures += abs(hits / 1000 - 0.2) > 0.05
    assert failures <= 1
