"""Function B attacks function A from inside its sandbox, as an attacker on a shared node would:
every attack is refused and A's records, files, instance and outputs stay as they were. The
same attacks succeed on an unisolated process sandbox (the control), so each test can fail."""
from __future__ import annotations

import signal
import uuid

import pytest

from tests.conftest import TEST_SANDBOX, deploy
from tests.integration._util import assert_healthy, instances_of, invoke, pid_alive, wait_for
from tests.security.conftest import ATTACKER, CHANGES, READS, Arena, kill_marked, log_of, marked

pytestmark = pytest.mark.slow


def test_b_can_neither_read_nor_change_a(arena: Arena) -> None:
    results = arena.attack(READS + CHANGES)
    assert set(results) == set(READS + CHANGES)
    succeeded = {name: got for name, got in results.items() if not got.startswith("refused")}
    assert succeeded == {}, succeeded
    assert not (arena.a_code_dir / "handler.py").exists()
    arena.assert_a_unchanged()
    assert_healthy(arena.server)


def test_the_attacks_work_without_isolation(control_arena: Arena) -> None:
    results = control_arena.attack(READS + CHANGES)
    refused = {name: got for name, got in results.items() if not got.startswith("ok")}
    assert refused == {}, refused
    assert results["read_environ"] == results["read_registry"] == "ok: secret"
    # B planted a handler.py in A's code (its "ok" above), then deleted A: deleting the last
    # function that refers to that code removed the code directory too
    assert not control_arena.a_code_dir.exists()
    assert not pid_alive(control_arena.a_instance["pid"])
    assert results["delete_a"] == "ok: HTTP 204"
    with pytest.raises(control_arena.client.exceptions.ResourceNotFoundException):
        control_arena.client.get_function(FunctionName="fn-a")


def _hog(arena: Arena, name: str, memory_mb: int) -> tuple[dict, dict]:
    deploy(arena.client, name, arena.b_zip, MemorySize=memory_mb)
    return invoke(arena.client, name, {"mb": 1536})


@pytest.mark.parametrize("memory_mb", [1024, 128])
def test_memory_size_bounds_what_an_instance_can_take(arena: Arena, memory_mb: int) -> None:
    resp, body = _hog(arena, f"hog-{memory_mb}", memory_mb)
    assert resp.get("FunctionError"), body          # 1.5 GiB was never handed out
    log = log_of(arena.server, f"hog-{memory_mb}")
    assert ("exceeded its memory limit" in log or "MemoryError" in log), log[-2000:]
    arena.assert_a_unchanged()


def test_a_started_process_dies_with_its_instance(arena: Arena) -> None:
    marker = f"slfaas-escape-{uuid.uuid4().hex}"
    deploy(arena.client, "escaper", arena.b_zip)
    try:
        resp, body = invoke(arena.client, "escaper", {"escape": marker})
        assert body == {"escape": "escaped"}, body
        wait_for(lambda: marked(marker), 10, "the escaped grandchild to run")   # the attack ran
        arena.client.delete_function(FunctionName="escaper")                   # stops its instance
        wait_for(lambda: not marked(marker), 10, "the escaped grandchild to die with its instance")
    finally:
        kill_marked(marker)


def test_without_isolation_memory_and_processes_are_unbounded(control_arena: Arena) -> None:
    resp, body = _hog(control_arena, "hog-1024", 1024)
    assert body == {"allocated_mb": 1536}, body
    marker = f"slfaas-escape-{uuid.uuid4().hex}"
    try:
        _, body = invoke(control_arena.client, "fn-b", {"escape": marker})
        assert body == {"escape": "escaped"}, body
        (pid,) = wait_for(lambda: marked(marker), 10, "the escaped grandchild to run")
        control_arena.client.delete_function(FunctionName="fn-b")     # its instance is stopped...
        assert instances_of(control_arena.server, "fn-b") == []
        assert pid_alive(pid)                                          # ...and the grandchild lives on
    finally:
        kill_marked(marker)


def test_a_started_process_dies_with_a_killed_server(live_server_factory, tiny_assets) -> None:  # type: ignore[no-untyped-def]
    from tests.security.conftest import backend_problem

    problem = backend_problem()
    if problem is not None:
        pytest.skip(problem)
    server = live_server_factory("--keep-alive-s", "600")
    client = server.client()
    marker = f"slfaas-escape-{uuid.uuid4().hex}"
    deploy(client, "escaper", tiny_assets.zip(tiny_assets.adapter_b, extra={"handler.py": ATTACKER}), MemorySize=1024)
    try:
        _, body = invoke(client, "escaper", {"escape": marker})
        assert body == {"escape": "escaped"}, body
        (inst,) = instances_of(server, "escaper")
        wait_for(lambda: marked(marker), 10, "the escaped grandchild to run")
        server.stop(signal.SIGKILL)                     # no cleanup by the server: the kernel's doing
        wait_for(lambda: not marked(marker) and not pid_alive(inst["pid"]), 10,
                 "the instance and its escaped grandchild to die with the server")
    finally:
        kill_marked(marker)
        if TEST_SANDBOX == "process":
            from slfaas.gpu_node.sandboxes.memlimit import memory_control
            memory_control().close()   # what the next server would do: remove the dead one's cgroups
