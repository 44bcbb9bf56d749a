"""SQLAlchemy 2 table definitions for the registry (SQLite by default, any SQLAlchemy URL).

Sizes and token counts are 64-bit (``BigInteger``): PostgreSQL's INTEGER is 32 bits, and a 7B
backbone has more bytes than that (SQLite's INTEGER is 64 bits either way)."""
from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Float, Integer, LargeBinary, String, Text, inspect, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


def add_missing_columns(engine: Engine) -> list[str]:
    """Add the columns a table gained after a database was made (``create_all`` makes missing
    tables only), so upgrading keeps every record: nullable, with the column's server default
    where it has one (older rows then read as that default). Returns "table.column" of each
    column added."""
    found = inspect(engine)
    added = []
    with engine.begin() as conn:
        for table in Base.metadata.sorted_tables:
            if not found.has_table(table.name):
                continue
            have = {c["name"] for c in found.get_columns(table.name)}
            for col in table.columns:
                if col.name in have:
                    continue
                kind = col.type.compile(engine.dialect)
                default = ""
                if col.server_default is not None:
                    value = str(col.server_default.arg).replace("'", "''")   # type: ignore[attr-defined]
                    default = f" DEFAULT '{value}'"
                conn.execute(text(f'ALTER TABLE {table.name} ADD COLUMN "{col.name}" {kind}{default}'))
                added.append(f"{table.name}.{col.name}")
    return added


class FunctionRow(Base):
    __tablename__ = "functions"

    name: Mapped[str] = mapped_column(String(170), primary_key=True)
    version: Mapped[str] = mapped_column(String(32), primary_key=True)
    runtime: Mapped[str] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(2048))
    handler: Mapped[str] = mapped_column(String(128))
    description: Mapped[str] = mapped_column(String(256), default="")
    timeout_s: Mapped[int] = mapped_column(Integer)
    memory_mb: Mapped[int] = mapped_column(Integer)
    environment_json: Mapped[str] = mapped_column(Text, default="{}")
    code_sha256_hex: Mapped[str] = mapped_column(String(64))
    code_size_bytes: Mapped[int] = mapped_column(BigInteger)
    base_model_path: Mapped[str] = mapped_column(String(4096))
    state: Mapped[str] = mapped_column(String(16))
    state_reason: Mapped[str] = mapped_column(Text, default="")
    state_reason_code: Mapped[str] = mapped_column(String(64), default="")
    last_update_status: Mapped[str] = mapped_column(String(16))
    last_update_status_reason: Mapped[str] = mapped_column(Text, default="")
    revision_id: Mapped[str] = mapped_column(String(36))
    last_modified: Mapped[str] = mapped_column(String(40))
    created_ts: Mapped[float] = mapped_column(Float)


class BaseModelRow(Base):
    __tablename__ = "base_models"

    name: Mapped[str] = mapped_column(String(256), primary_key=True)
    path: Mapped[str] = mapped_column(String(4096))
    created_ts: Mapped[float] = mapped_column(Float)


class InvocationRow(Base):
    __tablename__ = "invocations"

    request_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    function_name: Mapped[str] = mapped_column(String(170), index=True)
    version: Mapped[str] = mapped_column(String(32))
    code_sha256_hex: Mapped[str] = mapped_column(String(64), default="")
    instance_id: Mapped[str] = mapped_column(String(64), default="")
    status: Mapped[str] = mapped_column(String(32))
    start_ts: Mapped[float] = mapped_column(Float, index=True)
    end_ts: Mapped[float | None] = mapped_column(Float, nullable=True)
    duration_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    init_duration_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    queue_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    cold_start: Mapped[bool] = mapped_column(Boolean, default=False)
    error_type: Mapped[str] = mapped_column(String(128), default="")
    error_message: Mapped[str] = mapped_column(Text, default="")
    prompt_tokens: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    completion_tokens: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    ttft_ms: Mapped[float | None] = mapped_column(Float, nullable=True)


class IntegrityEventRow(Base):
    __tablename__ = "integrity_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    ts: Mapped[float] = mapped_column(Float, index=True)
    node_id: Mapped[str] = mapped_column(String(32), default="")
    model_path: Mapped[str] = mapped_column(String(4096))
    ok: Mapped[bool] = mapped_column(Boolean)
    elapsed_ms: Mapped[float] = mapped_column(Float)
    bad_tensors_json: Mapped[str] = mapped_column(Text, default="[]")
    stopped_instances_json: Mapped[str] = mapped_column(Text, default="[]")
    reload_s: Mapped[float | None] = mapped_column(Float, nullable=True)


# Versions, aliases, tags, concurrency and asynchronous invocations. Published versions
# are rows of ``functions`` with a numeric ``version``; their numbers are never reused, so the
# last one handed out is kept apart from the rows (a deleted version leaves a gap, as on AWS).
class VersionCounterRow(Base):
    __tablename__ = "version_counters"

    function_name: Mapped[str] = mapped_column(String(170), primary_key=True)
    last_version: Mapped[int] = mapped_column(Integer, default=0)


class AliasRow(Base):
    __tablename__ = "aliases"

    function_name: Mapped[str] = mapped_column(String(170), primary_key=True)
    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    function_version: Mapped[str] = mapped_column(String(32))
    description: Mapped[str] = mapped_column(String(256), default="")
    routing_json: Mapped[str] = mapped_column(Text, default="{}")   # {version: weight}
    revision_id: Mapped[str] = mapped_column(String(36))
    created_ts: Mapped[float] = mapped_column(Float)


class TagRow(Base):
    __tablename__ = "function_tags"

    function_name: Mapped[str] = mapped_column(String(170), primary_key=True)
    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    value: Mapped[str] = mapped_column(String(256), default="")


class ReservedConcurrencyRow(Base):
    __tablename__ = "reserved_concurrency"

    function_name: Mapped[str] = mapped_column(String(170), primary_key=True)
    reserved: Mapped[int] = mapped_column(Integer)


class ProvisionedConcurrencyRow(Base):
    __tablename__ = "provisioned_concurrency"

    function_name: Mapped[str] = mapped_column(String(170), primary_key=True)
    qualifier: Mapped[str] = mapped_column(String(128), primary_key=True)
    requested: Mapped[int] = mapped_column(Integer)
    last_modified: Mapped[str] = mapped_column(String(40))


class EventInvocationRow(Base):
    """An ``InvocationType=Event`` request: its payload (so a restart can resume the queue),
    attempts, and the result of the last attempt."""

    __tablename__ = "event_invocations"

    request_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    function_name: Mapped[str] = mapped_column(String(170), index=True)
    version: Mapped[str] = mapped_column(String(32))
    invoked_arn: Mapped[str] = mapped_column(String(300), default="")
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    client_context: Mapped[str | None] = mapped_column(Text, nullable=True)
    status: Mapped[str] = mapped_column(String(32), index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    throttles: Mapped[int] = mapped_column(Integer, default=0)
    enqueued_ts: Mapped[float] = mapped_column(Float)
    next_attempt_ts: Mapped[float] = mapped_column(Float)
    result: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    function_error: Mapped[str] = mapped_column(String(32), default="")
    error_type: Mapped[str] = mapped_column(String(128), default="")


# Billing: per-invocation usage records, each node session's metered usage, budgets.
# Money is stored as decimal strings (exact); SQLite has no exact decimal type.
class UsageRow(Base):
    """One per attempt: an Event invocation's retries keep its request id, each is billed."""

    __tablename__ = "usage_records"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(String(36), index=True)
    function_name: Mapped[str] = mapped_column(String(170), index=True)
    version: Mapped[str] = mapped_column(String(32))
    node_id: Mapped[str] = mapped_column(String(32), index=True)
    device: Mapped[str] = mapped_column(String(32))
    device_type: Mapped[str] = mapped_column(String(64))
    start_ts: Mapped[float] = mapped_column(Float)
    end_ts: Mapped[float] = mapped_column(Float, index=True)
    status: Mapped[str] = mapped_column(String(32))
    cold_start: Mapped[bool] = mapped_column(Boolean)
    preload_tier: Mapped[str] = mapped_column(String(16))
    batch_size: Mapped[int] = mapped_column(Integer)
    batch_device_s: Mapped[float] = mapped_column(Float)
    compute_device_s: Mapped[float] = mapped_column(Float)
    init_device_s: Mapped[float] = mapped_column(Float)
    runtime_overhead_s: Mapped[float] = mapped_column(Float)
    queue_s: Mapped[float] = mapped_column(Float)
    tokens_in: Mapped[int] = mapped_column(BigInteger)
    tokens_out: Mapped[int] = mapped_column(BigInteger)
    memory_mb: Mapped[int] = mapped_column(Integer)
    cost_usd: Mapped[str] = mapped_column(String(40))
    init_phases_json: Mapped[str] = mapped_column(Text, default="{}")
    adapter_tier: Mapped[str] = mapped_column(String(16), default="", server_default="")


class NodeUsageRow(Base):
    __tablename__ = "node_usage"

    node_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    device: Mapped[str] = mapped_column(String(32))
    device_type: Mapped[str] = mapped_column(String(64))
    start_ts: Mapped[float] = mapped_column(Float, index=True)
    end_ts: Mapped[float] = mapped_column(Float)
    elapsed_s: Mapped[float] = mapped_column(Float)
    billed_device_s: Mapped[float] = mapped_column(Float)
    overhead_json: Mapped[str] = mapped_column(Text)
    keep_alive_json: Mapped[str] = mapped_column(Text)
    backbone_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    backbone_load_s: Mapped[float] = mapped_column(Float, default=0.0)
    # added later: a server default, so that add_missing_columns can add them to an older database
    provisioned_json: Mapped[str] = mapped_column(Text, default="{}", server_default="{}")
    idle_instance_json: Mapped[str] = mapped_column(Text, default="{}", server_default="{}")


class InstanceUsageRow(Base):
    """One instance's life (start to end) on a node: a serverless baseline's billing unit."""

    __tablename__ = "instance_usage"

    instance_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    function_name: Mapped[str] = mapped_column(String(170), index=True)
    version: Mapped[str] = mapped_column(String(32))
    node_id: Mapped[str] = mapped_column(String(32), index=True)
    device: Mapped[str] = mapped_column(String(32))
    device_type: Mapped[str] = mapped_column(String(64))
    memory_mb: Mapped[int] = mapped_column(Integer)
    start_ts: Mapped[float] = mapped_column(Float, index=True)
    end_ts: Mapped[float] = mapped_column(Float, index=True)
    ready_ts: Mapped[float | None] = mapped_column(Float, nullable=True)
    device_mb: Mapped[float | None] = mapped_column(Float, nullable=True)
    device_mb_measured: Mapped[bool] = mapped_column(Boolean, default=False)
    invocations: Mapped[int] = mapped_column(Integer, default=0)


class BudgetRow(Base):
    __tablename__ = "budgets"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    limit_usd: Mapped[str] = mapped_column(String(40))
    period: Mapped[str] = mapped_column(String(8))
    hard: Mapped[bool] = mapped_column(Boolean)
    function_name: Mapped[str | None] = mapped_column(String(170), nullable=True)
    created_ts: Mapped[float] = mapped_column(Float)


def clip_to_columns(row_type: type[Base], values: dict) -> dict:
    """``values`` with each string cut to its column's length. For what a function itself reports
    (an error type from its runtime can be any length): SQLite would keep it whole, PostgreSQL
    would refuse the row and lose the record."""
    columns = row_type.__table__.columns   # type: ignore[attr-defined]
    out = dict(values)
    for key, value in values.items():
        length = getattr(columns[key].type, "length", None) if key in columns else None
        if isinstance(value, str) and length is not None and len(value) > length:
            out[key] = value[:length]
    return out
