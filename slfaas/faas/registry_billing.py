"""Registry storage of billing: usage records, node usage, budgets (a mixin of ``Registry``)."""
from __future__ import annotations

import json
from decimal import Decimal
from typing import Callable

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from slfaas.billing.budgets import Budget
from slfaas.billing.records import InstanceUsage, NodeUsage, UsageRecord
from slfaas.errors import NotFound
from slfaas.faas.tables import BudgetRow, InstanceUsageRow, NodeUsageRow, UsageRow

_PLAIN = ("request_id", "function_name", "version", "node_id", "device", "device_type", "start_ts", "end_ts",
          "status", "cold_start", "preload_tier", "batch_size", "batch_device_s", "compute_device_s",
          "init_device_s", "runtime_overhead_s", "queue_s", "tokens_in", "tokens_out", "memory_mb", "adapter_tier")

_INSTANCE = ("instance_id", "function_name", "version", "node_id", "device", "device_type", "memory_mb", "start_ts",
             "end_ts", "ready_ts", "device_mb", "device_mb_measured", "invocations")


def _usage_row(rec: UsageRecord) -> UsageRow:
    return UsageRow(**{k: getattr(rec, k) for k in _PLAIN}, cost_usd=str(rec.cost_usd),
                    init_phases_json=json.dumps(dict(rec.init_phases_s), sort_keys=True))


def _usage(row: UsageRow) -> UsageRecord:
    return UsageRecord(**{k: getattr(row, k) or "" if k == "adapter_tier" else getattr(row, k) for k in _PLAIN},
                       cost_usd=Decimal(row.cost_usd),
                       init_phases_s=json.loads(row.init_phases_json or "{}"))


def _node_usage(row: NodeUsageRow) -> NodeUsage:
    return NodeUsage(row.node_id, row.device, row.device_type, row.start_ts, row.end_ts, row.elapsed_s,
                     row.billed_device_s, json.loads(row.overhead_json), json.loads(row.keep_alive_json),
                     row.backbone_bytes, row.backbone_load_s, json.loads(row.provisioned_json or "{}"),
                     json.loads(row.idle_instance_json or "{}"))


def _budget(row: BudgetRow) -> Budget:
    return Budget.create(row.name, Decimal(row.limit_usd), row.period, row.hard, row.function_name)


class BillingMixin:
    _session: Callable[[], Session]

    def record_usage(self, rec: UsageRecord) -> None:
        with self._session() as s:
            s.add(_usage_row(rec))
            s.commit()

    def recent_costs(self, per_function: int) -> dict[str, list[Decimal]]:
        """The last ``per_function`` invocation costs of each function (budget estimates)."""
        out: dict[str, list[Decimal]] = {}
        with self._session() as s:
            rows = s.execute(select(UsageRow.function_name, UsageRow.cost_usd)
                             .order_by(UsageRow.end_ts.desc()).limit(per_function * 200))
            for name, cost in rows:
                costs = out.setdefault(name, [])
                if len(costs) < per_function:
                    costs.append(Decimal(cost))
        return out

    def list_usage(self, since_ts: float | None = None, until_ts: float | None = None,
                   function_name: str | None = None) -> list[UsageRecord]:
        """Records whose invocation ended in [since, until), oldest first."""
        with self._session() as s:
            stmt = select(UsageRow).order_by(UsageRow.end_ts, UsageRow.id)
            if since_ts is not None:
                stmt = stmt.where(UsageRow.end_ts >= since_ts)
            if until_ts is not None:
                stmt = stmt.where(UsageRow.end_ts < until_ts)
            if function_name is not None:
                stmt = stmt.where(UsageRow.function_name == function_name)
            return [_usage(r) for r in s.scalars(stmt)]

    def put_node_usage(self, usage: NodeUsage) -> None:
        """Insert or update the node's row. Two flushes of one node may race (its meter and a final
        flush): the loser of the insert finds the row and updates it (PostgreSQL reports the race
        as a unique violation; SQLite serialises writers)."""
        for attempt in range(2):
            with self._session() as s:
                s.merge(NodeUsageRow(
                    node_id=usage.node_id, device=usage.device, device_type=usage.device_type,
                    start_ts=usage.start_ts, end_ts=usage.end_ts, elapsed_s=usage.elapsed_s,
                    billed_device_s=usage.billed_device_s,
                    overhead_json=json.dumps(dict(usage.overhead_s), sort_keys=True),
                    keep_alive_json=json.dumps(dict(usage.keep_alive_by_function_s), sort_keys=True),
                    backbone_bytes=usage.backbone_bytes, backbone_load_s=usage.backbone_load_s,
                    provisioned_json=json.dumps(dict(usage.provisioned_by_function_s), sort_keys=True),
                    idle_instance_json=json.dumps(dict(usage.idle_instance_by_function_s), sort_keys=True)))
                try:
                    s.commit()
                    return
                except IntegrityError:
                    if attempt:
                        raise

    def list_node_usage(self, since_ts: float | None = None, until_ts: float | None = None) -> list[NodeUsage]:
        """Node sessions that overlap [since, until)."""
        with self._session() as s:
            stmt = select(NodeUsageRow).order_by(NodeUsageRow.start_ts)
            if since_ts is not None:
                stmt = stmt.where(NodeUsageRow.end_ts >= since_ts)
            if until_ts is not None:
                stmt = stmt.where(NodeUsageRow.start_ts < until_ts)
            return [_node_usage(r) for r in s.scalars(stmt)]

    def record_instance_usage(self, life: InstanceUsage) -> None:
        """An instance that ended (``end_ts`` set)."""
        if life.end_ts is None:
            raise ValueError(f"instance {life.instance_id} has not ended: only ended instances are stored")
        with self._session() as s:
            s.merge(InstanceUsageRow(**{k: getattr(life, k) for k in _INSTANCE}))
            s.commit()

    def list_instance_usage(self, since_ts: float | None = None, until_ts: float | None = None,
                            function_name: str | None = None) -> list[InstanceUsage]:
        """Ended instances alive at some time in [since, until), oldest first."""
        with self._session() as s:
            stmt = select(InstanceUsageRow).order_by(InstanceUsageRow.start_ts, InstanceUsageRow.instance_id)
            if since_ts is not None:
                stmt = stmt.where(InstanceUsageRow.end_ts >= since_ts)
            if until_ts is not None:
                stmt = stmt.where(InstanceUsageRow.start_ts < until_ts)
            if function_name is not None:
                stmt = stmt.where(InstanceUsageRow.function_name == function_name)
            return [InstanceUsage(**{k: getattr(r, k) for k in _INSTANCE}) for r in s.scalars(stmt)]

    def put_budget(self, budget: Budget, created_ts: float) -> None:
        with self._session() as s:
            s.merge(BudgetRow(name=budget.name, limit_usd=str(budget.limit_usd), period=budget.period,
                              hard=budget.hard, function_name=budget.function_name, created_ts=created_ts))
            s.commit()

    def list_budgets(self) -> list[Budget]:
        with self._session() as s:
            return [_budget(r) for r in s.scalars(select(BudgetRow).order_by(BudgetRow.name))]

    def delete_budget(self, name: str) -> None:
        with self._session() as s:
            row = s.get(BudgetRow, name)
            if row is None:
                raise NotFound(f"Budget not found: {name}")
            s.delete(row)
            s.commit()

    def spent_usd(self, since_ts: float, until_ts: float, function_name: str | None = None) -> Decimal:
        return sum((r.cost_usd for r in self.list_usage(since_ts, until_ts, function_name)), Decimal(0))
