"""The registry on SQLite and PostgreSQL: functions, base models, invocation records, persistence."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from slfaas.errors import Conflict, NotFound
from slfaas.faas.registry import LATEST, FunctionRecord, InvocationRecord, Registry


def _rec(name: str = "fn", **overrides) -> FunctionRecord:  # type: ignore[no-untyped-def]
    values = dict(
        name=name, version=LATEST, runtime="slfaas-lora", role="arn:aws:iam::000000000000:role/r",
        handler="slfaas.lora", description="d", timeout_s=30, memory_mb=512, environment={"B": "2", "A": "1"},
        code_sha256_hex="ab" * 32, code_size_bytes=123, base_model_path="/models/base", state="Pending",
        state_reason="creating", state_reason_code="Creating", last_update_status="InProgress",
        last_update_status_reason="", revision_id="rev-1", last_modified="2024-01-01T00:00:00.000+0000",
        created_ts=1000.5)
    values.update(overrides)
    return FunctionRecord(**values)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "registry.db"


@pytest.fixture
def reg(database_url: str):  # type: ignore[no-untyped-def]
    r = Registry(database_url)
    yield r
    r.close()


def test_insert_and_get_roundtrip(reg) -> None:  # type: ignore[no-untyped-def]
    rec = _rec()
    reg.insert_function(rec)
    assert reg.get_function("fn") == rec
    assert reg.get_function("fn").environment == {"A": "1", "B": "2"}
    with pytest.raises(NotFound):
        reg.get_function("missing")
    with pytest.raises(NotFound):
        reg.get_function("fn", "1")


def test_duplicate_insert_is_conflict(reg) -> None:  # type: ignore[no-untyped-def]
    reg.insert_function(_rec())
    with pytest.raises(Conflict):
        reg.insert_function(_rec(description="other"))
    assert reg.get_function("fn").description == "d"


def test_update_with_expected_revision(reg) -> None:  # type: ignore[no-untyped-def]
    reg.insert_function(_rec())
    updated = reg.update_function("fn", expected_revision="rev-1", revision_id="rev-2", state="Active",
                                  environment={"X": "y"})
    assert (updated.revision_id, updated.state, updated.environment) == ("rev-2", "Active", {"X": "y"})
    assert reg.get_function("fn") == updated
    # a writer still holding rev-1 lost the race
    with pytest.raises(Conflict):
        reg.update_function("fn", expected_revision="rev-1", state="Failed")
    assert reg.get_function("fn").state == "Active"
    # no expectation: unconditional
    assert reg.update_function("fn", description="new").description == "new"
    with pytest.raises(NotFound):
        reg.update_function("missing", expected_revision="rev-1", state="Active")
    with pytest.raises(NotFound):
        reg.update_function("missing", state="Active")


def test_list_pagination_is_ordered_by_name(reg) -> None:  # type: ignore[no-untyped-def]
    for name in ("delta", "alpha", "charlie", "bravo", "echo"):
        reg.insert_function(_rec(name))
    reg.insert_function(_rec("alpha", version="1"))  # published versions are not listed
    assert [r.name for r in reg.list_functions(None, 2)] == ["alpha", "bravo"]
    assert [r.name for r in reg.list_functions("bravo", 2)] == ["charlie", "delta"]
    assert [r.name for r in reg.list_functions("delta", 2)] == ["echo"]
    assert reg.list_functions("echo", 2) == []
    assert [r.name for r in reg.list_functions(None, 100)] == ["alpha", "bravo", "charlie", "delta", "echo"]
    assert all(r.version == LATEST for r in reg.list_functions(None, 100))
    assert len(list(reg.iter_functions())) == 6


def test_delete_removes_every_version(reg) -> None:  # type: ignore[no-untyped-def]
    reg.insert_function(_rec("a"))
    reg.insert_function(_rec("a", version="1"))
    reg.insert_function(_rec("b"))
    reg.delete_function("a")
    with pytest.raises(NotFound):
        reg.get_function("a")
    with pytest.raises(NotFound):
        reg.get_function("a", "1")
    assert [r.name for r in reg.list_functions(None, 10)] == ["b"]
    with pytest.raises(NotFound):
        reg.delete_function("a")
    reg.insert_function(_rec("a", revision_id="rev-new"))  # the name is free again
    assert reg.get_function("a").revision_id == "rev-new"


def test_base_model_crud(reg) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(NotFound):
        reg.get_base_model("tiny")
    first = reg.put_base_model("tiny", "/models/tiny")
    assert (first.name, first.path) == ("tiny", "/models/tiny")
    moved = reg.put_base_model("tiny", "/models/tiny-v2")
    assert moved.path == "/models/tiny-v2" and moved.created_ts == first.created_ts
    reg.put_base_model("alpha", "/models/alpha")
    assert [(m.name, m.path) for m in reg.list_base_models()] == [("alpha", "/models/alpha"),
                                                                  ("tiny", "/models/tiny-v2")]
    assert reg.get_base_model("tiny") == moved
    reg.delete_base_model("tiny")
    with pytest.raises(NotFound):
        reg.get_base_model("tiny")
    with pytest.raises(NotFound):
        reg.delete_base_model("tiny")
    assert [m.name for m in reg.list_base_models()] == ["alpha"]


def _inv(request_id: str, start_ts: float, function_name: str = "fn", **kw) -> InvocationRecord:  # type: ignore[no-untyped-def]
    return InvocationRecord(request_id=request_id, function_name=function_name, version=LATEST, status="running",
                            start_ts=start_ts, **kw)


def test_invocation_record_roundtrip(reg) -> None:  # type: ignore[no-untyped-def]
    rec = _inv("r-1", 10.0, code_sha256_hex="cd" * 32)
    reg.record_invocation(rec)
    assert reg.get_invocation("r-1") == rec
    done = reg.finish_invocation(rec, status="success", instance_id="i-1", end_ts=11.5, duration_ms=1500.25,
                                 init_duration_ms=300.0, queue_ms=0.5, cold_start=True, prompt_tokens=7,
                                 completion_tokens=16, ttft_ms=12.5)
    got = reg.get_invocation("r-1")
    assert got == done
    assert dataclasses.asdict(got) == {**dataclasses.asdict(rec), "status": "success", "instance_id": "i-1",
                                       "end_ts": 11.5, "duration_ms": 1500.25, "init_duration_ms": 300.0,
                                       "queue_ms": 0.5, "cold_start": True, "prompt_tokens": 7,
                                       "completion_tokens": 16, "ttft_ms": 12.5}
    with pytest.raises(NotFound):
        reg.get_invocation("r-2")


def test_list_invocations_newest_first_and_filtered(reg) -> None:  # type: ignore[no-untyped-def]
    reg.record_invocation(_inv("a1", 1.0))
    reg.record_invocation(_inv("b1", 2.0, function_name="other"))
    reg.record_invocation(_inv("a2", 3.0))
    assert [r.request_id for r in reg.list_invocations()] == ["a2", "b1", "a1"]
    assert [r.request_id for r in reg.list_invocations("fn")] == ["a2", "a1"]
    assert [r.request_id for r in reg.list_invocations(limit=1)] == ["a2"]


def test_mark_interrupted_invocations(reg) -> None:  # type: ignore[no-untyped-def]
    reg.record_invocation(_inv("run-1", 1.0))
    reg.record_invocation(_inv("run-2", 2.0))
    reg.record_invocation(dataclasses.replace(_inv("ok", 3.0), status="success"))
    assert reg.mark_interrupted_invocations() == 2
    for rid in ("run-1", "run-2"):
        r = reg.get_invocation(rid)
        assert (r.status, r.error_type) == ("interrupted", "Node.Stopped")
        assert r.error_message
    ok = reg.get_invocation("ok")
    assert (ok.status, ok.error_type) == ("success", "")
    assert reg.mark_interrupted_invocations() == 0


def test_data_survives_reopening(database_url, db_path) -> None:  # type: ignore[no-untyped-def]
    r1 = Registry(database_url)
    rec = _rec()
    r1.insert_function(rec)
    r1.update_function("fn", expected_revision="rev-1", revision_id="rev-2", state="Active")
    r1.put_base_model("tiny", "/models/tiny")
    r1.record_invocation(_inv("r-1", 5.0))
    r1.close()

    r2 = Registry(database_url)
    try:
        fn = r2.get_function("fn")
        assert (fn.revision_id, fn.state, fn.environment) == ("rev-2", "Active", rec.environment)
        assert r2.get_base_model("tiny").path == "/models/tiny"
        assert r2.get_invocation("r-1").status == "running"
        assert r2.mark_interrupted_invocations() == 1
    finally:
        r2.close()
    if not database_url.startswith("sqlite"):
        return
    r3 = Registry.for_data_dir(db_path.parent)  # the server's default location is the same file
    try:
        assert r3.get_invocation("r-1").status == "interrupted"
    finally:
        r3.close()


def test_a_database_made_before_node_usage_had_provisioned_columns_gains_them(tmp_path: Path) -> None:
    """An older registry (its node_usage without the provisioned and idle-instance columns)
    opens: the columns are added, old rows read as empty, new rows keep what they carry."""
    import sqlite3

    from slfaas.billing.records import NodeUsage

    path = tmp_path / "old.db"
    Registry(f"sqlite:///{path}").close()
    db = sqlite3.connect(path)
    for column in ("provisioned_json", "idle_instance_json"):
        db.execute(f"ALTER TABLE node_usage DROP COLUMN {column}")
    db.execute("INSERT INTO node_usage (node_id, device, device_type, start_ts, end_ts, elapsed_s, billed_device_s, "
               "overhead_json, keep_alive_json, backbone_bytes, backbone_load_s) "
               "VALUES ('old', 'cpu', 'cpu', 0, 10, 10, 1, '{\"node_idle\": 9}', '{}', 0, 0)")
    db.commit()
    db.close()
    reg = Registry(f"sqlite:///{path}")
    try:
        [old] = reg.list_node_usage()
        assert old.provisioned_by_function_s == {} and old.idle_instance_by_function_s == {}
        reg.put_node_usage(NodeUsage("new", "cpu", "cpu", 20, 30, 10, 1, {"node_idle": 4}, {}, 0, 0.0,
                                     {"fn": 5.0}, {"other": 2.5}))
        new = next(n for n in reg.list_node_usage() if n.node_id == "new")
        assert new.provisioned_by_function_s == {"fn": 5.0} and new.idle_instance_by_function_s == {"other": 2.5}
        assert new.billed_device_s + new.provisioned_s + new.overhead_total_s == new.elapsed_s
    finally:
        reg.close()
    from slfaas.faas.tables import add_missing_columns
    from sqlalchemy import create_engine
    assert add_missing_columns(create_engine(f"sqlite:///{path}")) == []   # nothing left to add


def test_what_a_function_reports_is_cut_to_its_columns(reg) -> None:  # type: ignore[no-untyped-def]
    """A runtime may post an error type of any length: the record is kept (PostgreSQL would
    refuse a value wider than its column), cut to the column."""
    long_type = "Handler." + "X" * 5000
    reg.record_invocation(_inv("r-long", 1.0))
    reg.finish_invocation(reg.get_invocation("r-long"), status="function_error", error_type=long_type,
                          error_message="m" * 100_000)
    got = reg.get_invocation("r-long")
    assert got.error_type == long_type[:128] and got.error_message == "m" * 100_000
