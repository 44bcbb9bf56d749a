"""Registry storage of published versions and aliases (a mixin of ``Registry``).

A published version is a row of ``functions`` with a numeric ``version``: the immutable
snapshot of $LATEST's code digest and configuration when it was published, with a revision
id of its own (the node keys instances by it, so a version keeps its own instances).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from slfaas.errors import Conflict, NotFound
from slfaas.faas.tables import AliasRow, FunctionRow, VersionCounterRow

LATEST = "$LATEST"


@dataclass(frozen=True)
class AliasRecord:
    function_name: str
    name: str
    function_version: str
    description: str
    revision_id: str
    created_ts: float
    routing: dict[str, float] = field(default_factory=dict)   # additional version → weight


def _to_alias(row: AliasRow) -> AliasRecord:
    return AliasRecord(function_name=row.function_name, name=row.name, function_version=row.function_version,
                       description=row.description, revision_id=row.revision_id, created_ts=row.created_ts,
                       routing={k: float(v) for k, v in json.loads(row.routing_json or "{}").items()})


class VersionsMixin:
    _session: Callable[[], Session]

    # versions
    def next_version_number(self, function_name: str) -> int:
        """The next version number of ``function_name``: never one handed out before."""
        with self._session() as s:
            if s.get(VersionCounterRow, function_name) is None:
                s.add(VersionCounterRow(function_name=function_name, last_version=0))
                try:
                    s.commit()
                except IntegrityError:
                    s.rollback()  # created meanwhile by a concurrent publish
            s.execute(update(VersionCounterRow).where(VersionCounterRow.function_name == function_name)
                      .values(last_version=VersionCounterRow.last_version + 1))
            s.commit()
            row = s.get(VersionCounterRow, function_name, populate_existing=True)
            assert row is not None
            return row.last_version

    def list_versions(self, function_name: str) -> list[Any]:
        """$LATEST first, then published versions in ascending order (ListVersionsByFunction's order)."""
        with self._session() as s:
            rows = s.scalars(select(FunctionRow).where(FunctionRow.name == function_name)).all()
            recs = [self._to_record(r) for r in rows]
        return sorted(recs, key=lambda r: -1 if r.version == LATEST else int(r.version))

    def delete_version(self, function_name: str, version: str) -> None:
        if version == LATEST:
            raise ValueError("$LATEST is deleted with the function")
        with self._session() as s:
            row = s.get(FunctionRow, (function_name, version))
            if row is None:
                raise NotFound(f"{function_name}:{version}")
            s.delete(row)
            s.commit()

    # aliases
    def insert_alias(self, rec: AliasRecord) -> None:
        with self._session() as s:
            s.add(AliasRow(function_name=rec.function_name, name=rec.name, function_version=rec.function_version,
                           description=rec.description, routing_json=json.dumps(rec.routing, sort_keys=True),
                           revision_id=rec.revision_id, created_ts=rec.created_ts))
            try:
                s.commit()
            except IntegrityError:
                raise Conflict(f"Alias already exists: {rec.name}")

    def get_alias(self, function_name: str, name: str) -> AliasRecord:
        with self._session() as s:
            row = s.get(AliasRow, (function_name, name))
            if row is None:
                raise NotFound(f"{function_name}:{name}")
            return _to_alias(row)

    def update_alias(self, function_name: str, name: str, expected_revision: str, **changes: Any) -> AliasRecord:
        """Apply ``changes`` only if the alias still has ``expected_revision``."""
        if "routing" in changes:
            changes["routing_json"] = json.dumps(changes.pop("routing"), sort_keys=True)
        with self._session() as s:
            result = s.execute(update(AliasRow).where(AliasRow.function_name == function_name, AliasRow.name == name,
                                                      AliasRow.revision_id == expected_revision).values(**changes))
            s.commit()
            if result.rowcount == 0:
                if s.get(AliasRow, (function_name, name)) is None:
                    raise NotFound(f"{function_name}:{name}")
                raise Conflict(f"Alias {name} changed concurrently; retry")
        return self.get_alias(function_name, name)

    def delete_alias(self, function_name: str, name: str) -> bool:
        with self._session() as s:
            result = s.execute(delete(AliasRow).where(AliasRow.function_name == function_name, AliasRow.name == name))
            s.commit()
            return bool(result.rowcount)

    def list_aliases(self, function_name: str, function_version: str | None = None) -> list[AliasRecord]:
        """Sorted by name; with ``function_version``, the aliases that route to it at all."""
        with self._session() as s:
            rows = s.scalars(select(AliasRow).where(AliasRow.function_name == function_name)
                             .order_by(AliasRow.name)).all()
            aliases = [_to_alias(r) for r in rows]
        if function_version is None:
            return aliases
        return [a for a in aliases if a.function_version == function_version or function_version in a.routing]

    @staticmethod
    def _delete_version_dependents(s: Session, function_name: str) -> None:
        s.execute(delete(AliasRow).where(AliasRow.function_name == function_name))
        s.execute(delete(VersionCounterRow).where(VersionCounterRow.function_name == function_name))
