"""Registry storage of tags, concurrency settings, usage figures and asynchronous invocations
(a mixin of ``Registry``)."""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Callable

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from slfaas.errors import NotFound
from slfaas.faas.tables import (EventInvocationRow, FunctionRow, ProvisionedConcurrencyRow, ReservedConcurrencyRow,
                                TagRow, clip_to_columns)

LATEST = "$LATEST"


@dataclass(frozen=True)
class ProvisionedConfig:
    function_name: str
    qualifier: str
    requested: int
    last_modified: str


@dataclass(frozen=True)
class EventRecord:
    request_id: str
    function_name: str
    version: str
    invoked_arn: str
    payload: bytes
    client_context: str | None
    status: str          # queued | running | retrying | success | function_error | expired | dropped
    attempts: int
    throttles: int
    enqueued_ts: float
    next_attempt_ts: float
    result: bytes | None = None
    function_error: str = ""
    error_type: str = ""


PENDING_EVENT_STATES = ("queued", "running", "retrying")


def _to_event(row: EventInvocationRow) -> EventRecord:
    return EventRecord(**{f.name: getattr(row, f.name) for f in fields(EventRecord)})


class SettingsMixin:
    _session: Callable[[], Session]

    # tags
    def get_tags(self, function_name: str) -> dict[str, str]:
        with self._session() as s:
            rows = s.scalars(select(TagRow).where(TagRow.function_name == function_name).order_by(TagRow.key))
            return {r.key: r.value for r in rows}

    def put_tags(self, function_name: str, tags: dict[str, str]) -> None:
        with self._session() as s:
            for key, value in tags.items():
                s.merge(TagRow(function_name=function_name, key=key, value=value))
            s.commit()

    def remove_tags(self, function_name: str, keys: list[str]) -> None:
        if not keys:
            return
        with self._session() as s:
            s.execute(delete(TagRow).where(TagRow.function_name == function_name, TagRow.key.in_(keys)))
            s.commit()

    # reserved concurrency
    def get_reserved_concurrency(self, function_name: str) -> int | None:
        with self._session() as s:
            row = s.get(ReservedConcurrencyRow, function_name)
            return None if row is None else row.reserved

    def put_reserved_concurrency(self, function_name: str, reserved: int) -> None:
        with self._session() as s:
            s.merge(ReservedConcurrencyRow(function_name=function_name, reserved=reserved))
            s.commit()

    def delete_reserved_concurrency(self, function_name: str) -> None:
        with self._session() as s:
            s.execute(delete(ReservedConcurrencyRow).where(ReservedConcurrencyRow.function_name == function_name))
            s.commit()

    def all_reserved_concurrency(self) -> dict[str, int]:
        with self._session() as s:
            return {r.function_name: r.reserved for r in s.scalars(select(ReservedConcurrencyRow))}

    # provisioned concurrency
    def put_provisioned(self, cfg: ProvisionedConfig) -> None:
        with self._session() as s:
            s.merge(ProvisionedConcurrencyRow(function_name=cfg.function_name, qualifier=cfg.qualifier,
                                              requested=cfg.requested, last_modified=cfg.last_modified))
            s.commit()

    def get_provisioned(self, function_name: str, qualifier: str) -> ProvisionedConfig:
        with self._session() as s:
            row = s.get(ProvisionedConcurrencyRow, (function_name, qualifier))
            if row is None:
                raise NotFound(f"{function_name}:{qualifier}")
            return ProvisionedConfig(row.function_name, row.qualifier, row.requested, row.last_modified)

    def delete_provisioned(self, function_name: str, qualifier: str) -> bool:
        with self._session() as s:
            result = s.execute(delete(ProvisionedConcurrencyRow).where(
                ProvisionedConcurrencyRow.function_name == function_name,
                ProvisionedConcurrencyRow.qualifier == qualifier))
            s.commit()
            return bool(result.rowcount)

    def list_provisioned(self, function_name: str | None = None) -> list[ProvisionedConfig]:
        """One function's configurations, or (None) every function's."""
        with self._session() as s:
            stmt = select(ProvisionedConcurrencyRow).order_by(ProvisionedConcurrencyRow.function_name,
                                                              ProvisionedConcurrencyRow.qualifier)
            if function_name is not None:
                stmt = stmt.where(ProvisionedConcurrencyRow.function_name == function_name)
            return [ProvisionedConfig(r.function_name, r.qualifier, r.requested, r.last_modified)
                    for r in s.scalars(stmt)]

    # usage
    def account_usage(self) -> tuple[int, int]:
        """(functions, code bytes over $LATEST and every published version), as AWS counts them."""
        with self._session() as s:
            count = s.scalar(select(func.count()).select_from(FunctionRow).where(FunctionRow.version == LATEST))
            size = s.scalar(select(func.coalesce(func.sum(FunctionRow.code_size_bytes), 0)))
            return int(count or 0), int(size or 0)

    # asynchronous invocations
    def insert_event(self, rec: EventRecord) -> None:
        with self._session() as s:
            s.add(EventInvocationRow(**clip_to_columns(EventInvocationRow, {f.name: getattr(rec, f.name)
                                                                             for f in fields(rec)})))
            try:
                s.commit()
            except IntegrityError:
                raise ValueError(f"event {rec.request_id} exists already")

    def get_event(self, request_id: str) -> EventRecord:
        with self._session() as s:
            row = s.get(EventInvocationRow, request_id)
            if row is None:
                raise NotFound(request_id)
            return _to_event(row)

    def update_event(self, request_id: str, **changes: Any) -> EventRecord:
        with self._session() as s:
            row = s.get(EventInvocationRow, request_id)
            if row is None:
                raise NotFound(request_id)
            for k, v in clip_to_columns(EventInvocationRow, changes).items():
                setattr(row, k, v)
            s.commit()
            return _to_event(row)

    def pending_events(self) -> list[EventRecord]:
        with self._session() as s:
            rows = s.scalars(select(EventInvocationRow).where(EventInvocationRow.status.in_(PENDING_EVENT_STATES))
                             .order_by(EventInvocationRow.next_attempt_ts))
            return [_to_event(r) for r in rows]

    @staticmethod
    def _delete_settings_dependents(s: Session, function_name: str) -> None:
        s.execute(delete(TagRow).where(TagRow.function_name == function_name))
        s.execute(delete(ReservedConcurrencyRow).where(ReservedConcurrencyRow.function_name == function_name))
        s.execute(delete(ProvisionedConcurrencyRow).where(ProvisionedConcurrencyRow.function_name == function_name))
