"""A run's billing records, read back from the server's cost API as billing's own values:
usage records (``/slfaas/v1/cost/usage``), instance lives (``/cost/instances``) and node
sessions (``/cost/nodes``)."""
from __future__ import annotations

import dataclasses
import urllib.parse
from decimal import Decimal
from typing import Any, Iterable, Mapping

from slfaas.billing.records import InstanceUsage, NodeUsage, UsageRecord
from slfaas.bench.errors import BenchError


def _fields(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def usage_from_json(d: Mapping[str, Any]) -> UsageRecord:
    values = {k: v for k, v in d.items() if k in _fields(UsageRecord)}
    values["cost_usd"] = Decimal(str(d["cost_usd"]))
    return UsageRecord(**values)


def instance_from_json(d: Mapping[str, Any]) -> InstanceUsage:
    return InstanceUsage(**{k: v for k, v in d.items() if k in _fields(InstanceUsage)})


def node_from_json(d: Mapping[str, Any]) -> NodeUsage:
    return NodeUsage(**{k: v for k, v in d.items() if k in _fields(NodeUsage)})


def _get(endpoint: str, path: str, **query: Any) -> Any:
    from slfaas.client import CliError, api

    qs = urllib.parse.urlencode({k: v for k, v in query.items() if v is not None})
    try:
        return api(endpoint, "GET", f"{path}?{qs}" if qs else path)
    except CliError as exc:
        raise BenchError(str(exc)) from None


def fetch_usage(endpoint: str, request_ids: Iterable[str]) -> list[UsageRecord]:
    """The usage records of ``request_ids`` (the run's own invocations), oldest first."""
    wanted = set(request_ids)
    body = _get(endpoint, "/slfaas/v1/cost/usage") or {}
    return [usage_from_json(u) for u in body.get("Usage", []) if u.get("request_id") in wanted]


def fetch_instances(endpoint: str, since_ts: float | None = None) -> list[InstanceUsage]:
    body = _get(endpoint, "/slfaas/v1/cost/instances", since=since_ts) or {}
    return [instance_from_json(i) for i in body.get("Instances", [])]


def fetch_nodes(endpoint: str) -> list[NodeUsage]:
    body = _get(endpoint, "/slfaas/v1/cost/nodes") or {}
    return [node_from_json(n) for n in body.get("Nodes", [])]
