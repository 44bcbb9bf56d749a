"""Aliases: names, routing configurations, and which version one invocation of an alias runs.

IO-free. An alias points at one version and may send a share of its traffic to one more
(``RoutingConfig.AdditionalVersionWeights``); the choice is a draw per invocation, as on AWS,
so over many invocations the split converges on the weights.
"""
from __future__ import annotations

import math
import random
import re
import threading
from typing import Any, Mapping

from slfaas.errors import InvalidParameter

LATEST = "$LATEST"
VERSION_RE = re.compile(r"^[0-9]{1,20}$")
ALIAS_RE = re.compile(r"^(?![0-9]+$)[a-zA-Z0-9-_]{1,128}$")
MAX_ADDITIONAL_VERSIONS = 1   # AWS: an alias points to at most two versions


def is_version(qualifier: str) -> bool:
    return bool(VERSION_RE.match(qualifier))


def validate_alias_name(name: Any) -> str:
    if not isinstance(name, str) or not ALIAS_RE.match(name):
        raise InvalidParameter(
            f"1 validation error detected: Value '{name}' at 'name' failed to satisfy constraint: Member must "
            f"satisfy regular expression pattern: (?!^[0-9]+$)([a-zA-Z0-9-_]+)")
    return name


def validate_version_ref(value: Any, field: str = "functionVersion") -> str:
    """A version an alias may point at: ``$LATEST`` or a published version number."""
    if not isinstance(value, str) or not (value == LATEST or VERSION_RE.match(value)):
        raise InvalidParameter(
            f"1 validation error detected: Value '{value}' at '{field}' failed to satisfy constraint: Member must "
            f"satisfy regular expression pattern: (\\$LATEST|[0-9]+)")
    return value


def parse_routing_config(value: Any) -> dict[str, float]:
    """``RoutingConfig`` from a request body → ``{version: weight}`` (empty: no routing)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidParameter("RoutingConfig must be an object with AdditionalVersionWeights")
    weights = value.get("AdditionalVersionWeights")
    if weights is None:
        return {}
    if not isinstance(weights, dict):
        raise InvalidParameter("RoutingConfig.AdditionalVersionWeights must be a map of version to weight")
    out: dict[str, float] = {}
    for version, weight in weights.items():
        if not isinstance(version, str) or not VERSION_RE.match(version):
            raise InvalidParameter(
                f"1 validation error detected: Value '{version}' at 'routingConfig.additionalVersionWeights' "
                f"failed to satisfy constraint: Map keys must satisfy constraint: [Member must satisfy regular "
                f"expression pattern: [0-9]+]")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) \
                or not 0.0 <= weight <= 1.0:
            raise InvalidParameter(
                f"1 validation error detected: Value '{weight}' at 'routingConfig.additionalVersionWeights' "
                f"failed to satisfy constraint: Map value must satisfy constraint: [Member must have value less "
                f"than or equal to 1.0, Member must have value greater than or equal to 0.0]")
        out[version] = float(weight)
    if len(out) > MAX_ADDITIONAL_VERSIONS:
        raise InvalidParameter(
            f"Number of items in AdditionalVersionWeights cannot be greater than {MAX_ADDITIONAL_VERSIONS}")
    return out


def check_routing(primary: str, weights: Mapping[str, float]) -> None:
    """The rules AWS applies between an alias's version and its additional versions."""
    if not weights:
        return
    if primary == LATEST:
        raise InvalidParameter("$LATEST is not supported for an alias pointing to more than 1 version")
    if primary in weights:
        raise InvalidParameter(
            f"Invalid function version {primary}. Function version {primary} is already included in routing "
            f"configuration.")
    if sum(weights.values()) > 1.0 + 1e-9:
        raise InvalidParameter("The sum of AdditionalVersionWeights must not exceed 1.0")


def pick_version(primary: str, weights: Mapping[str, float], draw: float) -> str:
    """The version for a uniform ``draw`` in [0, 1): additional versions take their weights'
    share from the bottom of the interval (in version order, so a draw is reproducible), the
    primary version the rest."""
    edge = 0.0
    for version in sorted(weights, key=int):
        edge += weights[version]
        if draw < edge:
            return version
    return primary


class AliasRouter:
    """Draws the routing choice; one lock around its generator (``random.Random`` is not
    documented as thread-safe)."""

    def __init__(self, seed: int | None = None):
        self._rng = random.Random(seed)
        self._lock = threading.Lock()

    def choose(self, primary: str, weights: Mapping[str, float]) -> str:
        if not weights:
            return primary
        with self._lock:
            draw = self._rng.random()
        return pick_version(primary, weights, draw)
