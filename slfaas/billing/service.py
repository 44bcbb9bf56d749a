"""CostService: usage records into the registry, budgets enforced on invocations, reports.

Used by the server (records arrive from the nodes' meters, reports include every live node's
usage) and by ``slfaas cost report --data-dir`` when no server runs (registry only).
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from decimal import Decimal
from typing import Callable, Sequence

from slfaas.billing.budgets import Budget, BudgetGuard, BudgetStatus, period_window
from slfaas.billing.prices import PriceSheet, default_prices
from slfaas.billing.records import InstanceUsage, NodeUsage, UsageRecord
from slfaas.billing.reports import Report, build_report

log = logging.getLogger(__name__)

ESTIMATE_WINDOW = 20   # recent costs per function; a hard budget reserves their maximum per request


class CostService:
    def __init__(self, registry: object, sheet: PriceSheet | None = None,
                 live_node: Callable[[], NodeUsage] | None = None,
                 on_budget_warning: Callable[[str | None, str], None] | None = None,
                 clock: Callable[[], float] = time.time,
                 live_nodes: Callable[[], Sequence[NodeUsage]] | None = None,
                 live_instances: Callable[[], list[InstanceUsage]] | None = None):
        """``live_nodes``: the usage so far of every node running now (nodes join and leave);
        ``live_node``: the same for a single node; ``live_instances``: the instances alive on
        the live nodes now (their meters')."""
        self.registry = registry
        self.live_instances = live_instances
        self.sheet = sheet or default_prices()
        if live_nodes is None and live_node is not None:
            one = live_node
            live_nodes = lambda: [one()]   # noqa: E731
        self.live_nodes = live_nodes
        self.on_budget_warning = on_budget_warning
        self._clock = clock
        self._lock = threading.Lock()
        # Held from a usage record's settlement until it is stored, and while budgets are seeded
        # from the registry: a seed must never see a cost settled in memory but not stored yet
        # (it would overwrite the spend without it, and a hard budget would let more through).
        self._spend_lock = threading.RLock()
        self.guard = BudgetGuard()
        self._tickets: dict[str, object] = {}
        self._recent: dict[str, deque[Decimal]] = {
            fn: deque(costs, maxlen=ESTIMATE_WINDOW) for fn, costs in registry.recent_costs(ESTIMATE_WINDOW).items()}
        self._warned: set[tuple[str, float, str]] = set()   # (budget, window start, level) logged
        self._load_budgets()

    # budgets
    def _load_budgets(self) -> None:
        with self._spend_lock:
            budgets = self.registry.list_budgets()
            self.guard.set_budgets(budgets)
            now = self._clock()
            for b in budgets:
                start, end = period_window(b.period, now)
                self.guard.seed(b.name, self.registry.spent_usd(start, end, b.function_name), now)

    def set_budget(self, budget: Budget) -> BudgetStatus:
        self.registry.put_budget(budget, self._clock())
        self._load_budgets()
        return next(s for s in self.budget_statuses() if s.budget.name == budget.name)

    def delete_budget(self, name: str) -> None:
        self.registry.delete_budget(name)
        self._load_budgets()

    def budget_statuses(self) -> list[BudgetStatus]:
        return self.guard.statuses(self._clock())

    # invocations
    def admit(self, function_name: str, request_id: str) -> None:
        """Before an invocation runs: raises ``BudgetExceeded`` (429) when a hard budget in
        scope has no room; otherwise reserves the function's recent maximum cost until the
        invocation's usage record settles it, so a concurrent burst stops at the limit. A
        function with no cost history yet reserves all the room a hard budget has left: one
        invocation at a time until its first cost is known."""
        with self._lock:
            recent = self._recent.get(function_name)
            estimate = max(recent) if recent else None
        if estimate is None:
            hard = [b.limit_usd for b in self.guard.budgets() if b.hard and b.applies_to(function_name)]
            estimate = max(hard, default=Decimal(0))
        ticket = self.guard.admit(function_name, estimate, self._clock())
        with self._lock:
            self._tickets[request_id] = ticket

    def release(self, request_id: str) -> None:
        """The invocation ended without a usage record (refused before the node ran it)."""
        with self._lock:
            ticket = self._tickets.pop(request_id, None)
        if ticket is not None:
            ticket.cancel()

    def record(self, rec: UsageRecord) -> None:
        """The node's meter hands over each invocation's usage: settle its budget (first: a
        failed write must not make the invocation free), then store it."""
        with self._lock:
            ticket = self._tickets.pop(rec.request_id, None)
            self._recent.setdefault(rec.function_name, deque(maxlen=ESTIMATE_WINDOW)).append(rec.cost_usd)
        # Every invocation reaches the node through FunctionService, which admitted it; a record
        # without a ticket (e.g. a node driven directly) is spent all the same.
        with self._spend_lock:
            try:
                if ticket is not None:
                    ticket.settle(rec.cost_usd, rec.end_ts)
                else:
                    self.guard.spend(rec.function_name, rec.cost_usd, rec.end_ts)
            finally:
                self.registry.record_usage(rec)
        self._warn(rec.function_name)

    def _warn(self, function_name: str) -> None:
        """Log each budget's crossing of 80 % / 100 % (spent or projected) once per level."""
        for status in self.budget_statuses():
            if not status.budget.applies_to(function_name) or status.level == "ok":
                continue
            key = (status.budget.name, status.window_start_ts, status.level)   # once per level per period
            with self._lock:
                if key in self._warned:
                    continue
                self._warned.add(key)
            log.warning("BUDGET %s: %s", status.level.upper(), status.message)
            if self.on_budget_warning is not None:
                self.on_budget_warning(status.budget.function_name or function_name,
                                       f"BUDGET {status.level.upper()}: {status.message}")

    # reports
    def _live(self) -> list[NodeUsage]:
        return list(self.live_nodes()) if self.live_nodes is not None else []

    def nodes(self, since_ts: float | None, until_ts: float | None,
              live: Sequence[NodeUsage] | None = None) -> list[NodeUsage]:
        """Node sessions in the window: stored ones, with the live nodes' usage now over theirs."""
        nodes = {n.node_id: n for n in self.registry.list_node_usage(since_ts, until_ts)}
        for n in self._live() if live is None else live:
            if until_ts is None or n.start_ts < until_ts:
                nodes[n.node_id] = n
        return sorted(nodes.values(), key=lambda n: n.start_ts)

    def instances(self, since_ts: float | None, until_ts: float | None,
                  function_name: str | None = None) -> list[InstanceUsage]:
        """Instances alive at some time in [since, until): ended ones from the registry, live
        ones (``end_ts`` None) from the live nodes; oldest first."""
        out = list(self.registry.list_instance_usage(since_ts, until_ts, function_name))
        if self.live_instances is not None:
            out += [i for i in self.live_instances() if (until_ts is None or i.start_ts < until_ts)
                    and (function_name is None or i.function_name == function_name)]
        return sorted(out, key=lambda i: (i.start_ts, i.instance_id))

    def report(self, since_ts: float | None = None, until_ts: float | None = None, group_by: str = "function",
               function_name: str | None = None) -> Report:
        now = self._clock()
        until = now if until_ts is None else until_ts
        # all of the window's records: the node view and conservation need them; the report filters
        records = self.registry.list_usage(since_ts, until)
        live = self._live()
        live_ids = {n.node_id for n in live}
        nodes = self.nodes(since_ts, until, live)
        since = since_ts if since_ts is not None else min(
            [r.start_ts for r in records] + [n.start_ts for n in nodes] + [until])
        # Node usage is kept per session, not per interval: the node view (and conservation)
        # covers the sessions wholly inside the window; records of other sessions are still billed.
        nodes = [n for n in nodes if n.start_ts >= since and (n.end_ts <= until or n.node_id in live_ids)]
        return build_report(records, nodes, self.sheet, since_ts=since, until_ts=until, group_by=group_by,
                            function_name=function_name, budgets=self.budget_statuses())


_UNITS_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_when(text: str, now_ts: float) -> float:
    """A report bound: epoch seconds, an ISO 8601 date/time (UTC unless it says otherwise), or
    a duration ago such as ``30m``, ``6h``, ``7d``."""
    from datetime import datetime, timezone
    import re

    from slfaas.errors import InvalidParameter

    t = text.strip()
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smhdw])", t)
    if m:
        return _in_range(now_ts - float(m.group(1)) * _UNITS_S[m.group(2)], text)
    try:
        value = float(t)
    except ValueError:
        value = None
    if value is not None:
        return _in_range(value, text)   # NaN fails the range test too
    try:
        dt = datetime.fromisoformat(t[:-1] + "+00:00" if t.endswith("Z") else t)
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=timezone.utc)
        dt.timestamp()
    except (ValueError, OverflowError):
        raise InvalidParameter(f"cannot read time {text!r}: use an ISO date/time (2026-11-23, "
                               f"2026-11-23T14:00Z), epoch seconds, or a duration ago (30m, 6h, 7d)") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return _in_range(dt.timestamp(), text)


MAX_TS = 253402300799.0   # 9999-12-31T23:59:59Z


def _in_range(ts: float, text: str) -> float:
    from slfaas.errors import InvalidParameter
    if not 0 <= ts <= MAX_TS:
        raise InvalidParameter(f"time {text!r} is outside 1970-01-01 .. 9999-12-31")
    return ts
