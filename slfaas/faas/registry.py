"""The registry: functions, base models and invocation records, stored through SQLAlchemy.

Every method opens its own short session, so the registry is safe to share across the
server's threads; values leave as frozen dataclasses, never as live ORM objects.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Iterator

from sqlalchemy import create_engine, event, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from slfaas.errors import Conflict, NotFound
from slfaas.faas.registry_billing import BillingMixin
from slfaas.faas.registry_settings import SettingsMixin
from slfaas.faas.registry_versions import VersionsMixin
from slfaas.faas.tables import (Base, BaseModelRow, FunctionRow, IntegrityEventRow, InvocationRow, add_missing_columns,
                                clip_to_columns)

LATEST = "$LATEST"


@dataclass(frozen=True)
class FunctionRecord:
    name: str
    version: str
    runtime: str
    role: str
    handler: str
    description: str
    timeout_s: int
    memory_mb: int
    environment: dict[str, str]
    code_sha256_hex: str
    code_size_bytes: int
    base_model_path: str
    state: str
    state_reason: str
    state_reason_code: str
    last_update_status: str
    last_update_status_reason: str
    revision_id: str
    last_modified: str
    created_ts: float


@dataclass(frozen=True)
class InvocationRecord:
    request_id: str
    function_name: str
    version: str
    status: str
    start_ts: float
    code_sha256_hex: str = ""
    instance_id: str = ""
    end_ts: float | None = None
    duration_ms: float | None = None
    init_duration_ms: float | None = None
    queue_ms: float | None = None
    cold_start: bool = False
    error_type: str = ""
    error_message: str = ""
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    ttft_ms: float | None = None


@dataclass(frozen=True)
class BaseModelEntry:
    name: str
    path: str
    created_ts: float


def _to_function(row: FunctionRow) -> FunctionRecord:
    values = {f.name: getattr(row, f.name) for f in fields(FunctionRecord) if f.name != "environment"}
    return FunctionRecord(environment=json.loads(row.environment_json or "{}"), **values)


def _to_invocation(row: InvocationRow) -> InvocationRecord:
    return InvocationRecord(**{f.name: getattr(row, f.name) for f in fields(InvocationRecord)})


class Registry(VersionsMixin, SettingsMixin, BillingMixin):
    _to_record = staticmethod(_to_function)   # what the mixins turn a FunctionRow into

    def __init__(self, database_url: str):
        self.database_url = database_url
        self.engine: Engine = create_engine(database_url, **_engine_kwargs(database_url))
        if database_url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)
        Base.metadata.create_all(self.engine)
        add_missing_columns(self.engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @classmethod
    def for_data_dir(cls, data_dir: Path) -> "Registry":
        return cls(f"sqlite:///{Path(data_dir).resolve() / 'registry.db'}")

    def close(self) -> None:
        self.engine.dispose()

    def _session(self) -> Session:
        return self._sessions()

    # functions
    def insert_function(self, rec: FunctionRecord) -> None:
        row = FunctionRow(**{f.name: getattr(rec, f.name) for f in fields(rec) if f.name != "environment"},
                          environment_json=json.dumps(rec.environment, sort_keys=True))
        with self._session() as s:
            s.add(row)
            try:
                s.commit()
            except IntegrityError:
                raise Conflict(f"Function already exist: {rec.name}")

    def get_function(self, name: str, version: str = LATEST) -> FunctionRecord:
        with self._session() as s:
            row = s.get(FunctionRow, (name, version))
            if row is None:
                raise NotFound(name)
            return _to_function(row)

    def update_function(self, name: str, expected_revision: str | None = None, version: str = LATEST,
                        **changes: Any) -> FunctionRecord:
        """Apply ``changes`` atomically; with ``expected_revision`` only if it still matches."""
        if "environment" in changes:
            changes["environment_json"] = json.dumps(changes.pop("environment"), sort_keys=True)
        with self._session() as s:
            stmt = update(FunctionRow).where(FunctionRow.name == name, FunctionRow.version == version)
            if expected_revision is not None:
                stmt = stmt.where(FunctionRow.revision_id == expected_revision)
            result = s.execute(stmt.values(**changes))
            s.commit()
            if result.rowcount == 0:
                if s.get(FunctionRow, (name, version)) is None:
                    raise NotFound(name)
                raise Conflict(f"Function {name} changed concurrently; retry")
        return self.get_function(name, version)

    def list_functions(self, after: str | None, limit: int) -> list[FunctionRecord]:
        with self._session() as s:
            stmt = select(FunctionRow).where(FunctionRow.version == LATEST).order_by(FunctionRow.name)
            if after is not None:
                stmt = stmt.where(FunctionRow.name > after)
            return [_to_function(r) for r in s.scalars(stmt.limit(limit))]

    def delete_function(self, name: str) -> None:
        with self._session() as s:
            rows = s.scalars(select(FunctionRow).where(FunctionRow.name == name)).all()
            if not rows:
                raise NotFound(name)
            for r in rows:
                s.delete(r)
            self._delete_version_dependents(s, name)   # aliases, version numbers: gone with the function
            self._delete_settings_dependents(s, name)  # tags, concurrency settings
            s.commit()

    def code_in_use(self, code_sha256_hex: str) -> bool:
        """Whether a function or a published version runs this code package."""
        with self._session() as s:
            return s.scalars(select(FunctionRow.name).where(FunctionRow.code_sha256_hex == code_sha256_hex)
                             .limit(1)).first() is not None

    def iter_functions(self) -> Iterator[FunctionRecord]:
        with self._session() as s:
            rows = s.scalars(select(FunctionRow)).all()
        return iter([_to_function(r) for r in rows])

    # base models
    def put_base_model(self, name: str, path: str) -> BaseModelEntry:
        with self._session() as s:
            row = s.get(BaseModelRow, name)
            if row is None:
                row = BaseModelRow(name=name, path=path, created_ts=time.time())
                s.add(row)
            else:
                row.path = path
            s.commit()
            return BaseModelEntry(row.name, row.path, row.created_ts)

    def get_base_model(self, name: str) -> BaseModelEntry:
        with self._session() as s:
            row = s.get(BaseModelRow, name)
            if row is None:
                raise NotFound(name)
            return BaseModelEntry(row.name, row.path, row.created_ts)

    def list_base_models(self) -> list[BaseModelEntry]:
        with self._session() as s:
            return [BaseModelEntry(r.name, r.path, r.created_ts)
                    for r in s.scalars(select(BaseModelRow).order_by(BaseModelRow.name))]

    def delete_base_model(self, name: str) -> None:
        with self._session() as s:
            row = s.get(BaseModelRow, name)
            if row is None:
                raise NotFound(name)
            s.delete(row)
            s.commit()

    # invocations
    def record_invocation(self, rec: InvocationRecord) -> None:
        with self._session() as s:
            values = {f.name: getattr(rec, f.name) for f in fields(rec)}
            s.merge(InvocationRow(**clip_to_columns(InvocationRow, values)))
            s.commit()

    def finish_invocation(self, rec: InvocationRecord, **changes: Any) -> InvocationRecord:
        done = replace(rec, **changes)
        self.record_invocation(done)
        return done

    def get_invocation(self, request_id: str) -> InvocationRecord:
        with self._session() as s:
            row = s.get(InvocationRow, request_id)
            if row is None:
                raise NotFound(request_id)
            return _to_invocation(row)

    def list_invocations(self, function_name: str | None = None, limit: int = 100) -> list[InvocationRecord]:
        with self._session() as s:
            stmt = select(InvocationRow).order_by(InvocationRow.start_ts.desc())
            if function_name is not None:
                stmt = stmt.where(InvocationRow.function_name == function_name)
            return [_to_invocation(r) for r in s.scalars(stmt.limit(limit))]

    def mark_interrupted_invocations(self) -> int:
        """At start-up: invocations still 'running' were cut off by a node stop or crash."""
        with self._session() as s:
            result = s.execute(update(InvocationRow).where(InvocationRow.status == "running")
                               .values(status="interrupted", error_type="Node.Stopped",
                                       error_message="the node stopped before the invocation finished"))
            s.commit()
            return result.rowcount


    # backbone integrity checks (only failures and on-demand checks are worth keeping forever,
    # but keeping every check is cheap and shows the schedule ran)
    def record_integrity_event(self, event: Any) -> None:
        with self._session() as s:
            s.add(IntegrityEventRow(ts=event.ts, model_path=event.model_path, ok=event.ok,
                                    elapsed_ms=event.elapsed_ms, bad_tensors_json=json.dumps(list(event.bad_tensors)),
                                    stopped_instances_json=json.dumps(list(event.stopped_instances)),
                                    reload_s=event.reload_s))
            s.commit()

    def list_integrity_events(self, failures_only: bool = False, limit: int = 100) -> list[dict[str, Any]]:
        with self._session() as s:
            stmt = select(IntegrityEventRow).order_by(IntegrityEventRow.ts.desc())
            if failures_only:
                stmt = stmt.where(IntegrityEventRow.ok.is_(False))
            return [{"ts": r.ts, "model_path": r.model_path, "ok": r.ok, "elapsed_ms": r.elapsed_ms,
                     "bad_tensors": json.loads(r.bad_tensors_json),
                     "stopped_instances": json.loads(r.stopped_instances_json), "reload_s": r.reload_s}
                    for r in s.scalars(stmt.limit(limit))]


def _engine_kwargs(url: str) -> dict[str, Any]:
    if url.startswith("sqlite"):
        return {"connect_args": {"check_same_thread": False, "timeout": 30}}
    return {"pool_pre_ping": True}


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()
