"""An instance that holds several invocations at once (its function's SLFAAS_MAX_BATCH_SIZE):
placement fills it, its runtime takes them through concurrent /next calls over the real
Runtime API, reports each one's batch and device share, and every waiting /next ends when the
instance stops."""
from __future__ import annotations

import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Iterator

import pytest

from slfaas.functions.runtime_client import NodeGone, RuntimeClient
from slfaas.gpu_node.dispatch import Dispatcher
from slfaas.gpu_node.invocation import batch_size
from slfaas.gpu_node.lifecycle.instance import Instance, InstanceState, Outcome, error_payload
from slfaas.gpu_node.lifecycle.runtime_env import runtime_env
from slfaas.gpu_node.lifecycle.table import InstanceTable
from slfaas.gpu_node.policy.scheduling import FcfsScheduler
from slfaas.gpu_node.runtime_api import RuntimeApiServer, result_metrics
from slfaas.runtime_contract import ENV_MAX_BATCH_SIZE, max_batch_size
from tests.gpu_node.fakes import make_request, make_spec, wait_until

SPEC = replace(make_spec(Path("/nonexistent"), Path("/nonexistent"), name="b"), max_batch_size=3)


@pytest.fixture
def served() -> Iterator[tuple[Instance, RuntimeClient]]:
    sock_dir = Path(tempfile.mkdtemp(prefix="slfaas-b-"))
    inst = Instance("b-1", SPEC, capacity=3)
    api = RuntimeApiServer(sock_dir / "i.sock", inst).start()
    yield inst, RuntimeClient(str(sock_dir / "i.sock"))
    api.close()
    sock_dir.rmdir()


def test_placement_fills_an_instance_up_to_its_capacity() -> None:
    table = InstanceTable()
    d = Dispatcher(FcfsScheduler(), table, 8, stop=lambda i: None)
    first = d.submit(make_request(SPEC))
    assert first.cold and first.instance.capacity == 3
    with first.instance._lock:
        first.instance._move(InstanceState.BUSY)          # its runtime asked for work
    more = [d.submit(make_request(SPEC)) for _ in range(2)]
    assert all(p.instance is first.instance and not p.cold for p in more)
    assert first.instance.inflight == 3
    fourth = d.submit(make_request(SPEC))                  # full: a second instance
    assert fourth.cold and fourth.instance is not first.instance


def test_the_runtime_learns_its_capacity_from_its_environment() -> None:
    env = runtime_env(SPEC, "b-1", Path("/tmp/s.sock"), "cpu")
    assert env[ENV_MAX_BATCH_SIZE] == "3" and max_batch_size(env) == 3
    # the function cannot claim more through its own variables: the node's value wins
    forged = replace(SPEC, environment={ENV_MAX_BATCH_SIZE: "64"})
    assert runtime_env(forged, "b-1", Path("/tmp/s.sock"), "cpu")[ENV_MAX_BATCH_SIZE] == "3"
    assert max_batch_size({}) == 1 and max_batch_size({ENV_MAX_BATCH_SIZE: "x"}) == 1
    assert max_batch_size({ENV_MAX_BATCH_SIZE: "1000"}) == 64


def test_concurrent_next_calls_each_take_one_invocation_and_report_their_batch(served) -> None:  # type: ignore[no-untyped-def]
    inst, client = served
    requests = [make_request(SPEC) for _ in range(3)]
    outcomes: dict[str, Outcome] = {}

    def caller(r) -> None:  # type: ignore[no-untyped-def]
        outcomes[r.request_id] = inst.run(r, False, time.time())[0]

    def worker() -> None:
        inv = client.next()
        share = {"device_ms": 10.0, "batch_device_ms": 30.0, "batch_size": 3, "ttft_ms": 1.5, "evil": {"x": 1}}
        client.respond(inv.request_id, b'{"ok": true}', metrics=share)

    threads = [threading.Thread(target=worker) for _ in requests] + \
              [threading.Thread(target=caller, args=(r,)) for r in requests]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert set(outcomes) == {r.request_id for r in requests}
    for o in outcomes.values():
        assert o.error_type is None and o.payload == b'{"ok": true}'
        assert o.metrics == {"device_ms": 10.0, "batch_device_ms": 30.0, "batch_size": 3, "ttft_ms": 1.5}


def test_stopping_ends_every_waiting_next(served) -> None:  # type: ignore[no-untyped-def]
    inst, client = served
    gone: list[BaseException] = []

    def worker() -> None:
        try:
            client.next()
        except NodeGone as exc:
            gone.append(exc)

    workers = [threading.Thread(target=worker) for _ in range(3)]
    for w in workers:
        w.start()
    assert inst._ready.wait(10)
    inst.begin_stop()
    for w in workers:
        w.join(10)
    assert len(gone) == 3 and all("410" in str(e) for e in gone)


def test_cancelling_one_call_of_a_batch_leaves_the_others_running() -> None:
    inst = Instance("b-2", SPEC, capacity=3)
    with inst._lock:
        inst._move(InstanceState.BUSY)
    a, b = make_request(SPEC), make_request(SPEC)
    results: dict[str, Outcome] = {}
    runs = [threading.Thread(target=lambda r=r: results.__setitem__(r.request_id, inst.run(r, False, time.time())[0]))
            for r in (a, b)]
    for t in runs:
        t.start()
    assert wait_until(lambda: inst.undelivered() == 2, 30)
    gone = Outcome(error_payload("Runtime.Cancelled", "caller left"), "Runtime.Cancelled")
    assert inst.cancel(a.request_id, gone)
    assert inst.state is InstanceState.BUSY                       # b's caller is still there
    assert inst.complete(b.request_id, b"{}", None) and not inst.complete(a.request_id, b"{}", None)
    for t in runs:
        t.join(10)
    assert results[a.request_id].error_type == "Runtime.Cancelled" and results[b.request_id].error_type is None
    c = make_request(SPEC)
    threading.Thread(target=lambda: inst.run(c, False, time.time()), daemon=True).start()
    assert wait_until(lambda: inst.undelivered() == 1, 30)
    assert inst.cancel(c.request_id, gone) and inst.state is InstanceState.FAILED   # alone: killed


def test_the_node_keeps_only_the_contract_metrics_and_a_plausible_batch_size() -> None:
    assert result_metrics('{"device_ms": 5, "batch_size": 2, "x": 1, "finish_reason": "stop"}') == \
        {"device_ms": 5, "batch_size": 2, "finish_reason": "stop"}
    for raw in (None, "", "[1]", "{", '{"device_ms": true}', '{"ttft_ms": {"a": 1}}'):
        assert not result_metrics(raw)
    assert batch_size({"batch_size": 3}, 4) == 3
    assert batch_size({"batch_size": 1000}, 4) == 4          # never above what the node let it hold
    for bad in (None, {}, {"batch_size": "3"}, {"batch_size": True}, {"batch_size": float("nan")},
                {"batch_size": -2}):
        assert batch_size(bad, 4) == 1


def test_a_cancel_after_the_call_ended_leaves_a_healthy_instance_alone() -> None:
    from slfaas.gpu_node.invocation import DispatchGate

    inst = Instance("b-3", SPEC, capacity=1)
    with inst._lock:
        inst._move(InstanceState.IDLE)
    a = make_request(SPEC)
    assert inst.reserve(a.request_id)
    gate = DispatchGate()
    assert gate.begin(a.request_id)
    out: list = []
    t = threading.Thread(target=lambda: out.append(inst.run(a, False, time.time())[0]))
    t.start()
    assert wait_until(lambda: inst.undelivered() == 1, 30)
    assert inst.complete(a.request_id, b"{}", None)
    t.join(10)
    # the caller leaves now, while its request still holds its place (the log sync, the report)
    assert gate.cancel(a.request_id, inst) is False
    assert inst.state is InstanceState.BUSY and out[0].error_type is None      # not killed
    inst.release(a.request_id)
    gate.end(a.request_id)
    assert inst.state is InstanceState.IDLE
    b = make_request(SPEC)                                # handed over, its call not registered yet
    assert inst.reserve(b.request_id) and gate.begin(b.request_id)
    assert gate.cancel(b.request_id, inst) is True and inst.state is InstanceState.FAILED
    assert gate.cancelled(b.request_id)                   # so it is not placed again


def test_a_gpu_runtime_learns_its_device_memory_bound_and_a_function_cannot_forge_it() -> None:
    from slfaas.gpu_node.lifecycle.runtime_env import device_bound_mb
    from slfaas.gpu_node.types import SHARED_NAME_PREFIX, SHARED_REVISION
    from slfaas.runtime_contract import ENV_INSTANCE_DEVICE_MB, instance_device_bytes

    sock = Path("/tmp/s.sock")
    env = runtime_env(SPEC, "b-1", sock, "cuda:0", 7000)
    assert instance_device_bytes(env) == 7000 * 2**20
    forged = replace(SPEC, environment={ENV_INSTANCE_DEVICE_MB: "999999"})
    assert instance_device_bytes(runtime_env(forged, "b-1", sock, "cuda:0", 7000)) == 7000 * 2**20
    # where the node sets none, a function's own value is dropped too; none on a CPU
    assert ENV_INSTANCE_DEVICE_MB not in runtime_env(forged, "b-1", sock, "cuda:0")
    assert ENV_INSTANCE_DEVICE_MB not in runtime_env(SPEC, "b-1", sock, "cpu", 7000)
    assert instance_device_bytes({}) is None and instance_device_bytes({ENV_INSTANCE_DEVICE_MB: "x"}) is None
    assert instance_device_bytes({ENV_INSTANCE_DEVICE_MB: "0"}) is None
    # a function's own runtime gets --instance-gpu-mb; the shared runtime --shared-runtime-gpu-mb (0: none)
    shared = replace(SPEC, name=SHARED_NAME_PREFIX + "x", revision_id=SHARED_REVISION)
    assert shared.is_shared_runtime and not SPEC.is_shared_runtime
    assert device_bound_mb(SPEC, 1536, 0) == 1536 and device_bound_mb(shared, 1536, 0) is None
    assert device_bound_mb(shared, 1536, 28672) == 28672 and device_bound_mb(SPEC, 1536, 28672) == 1536
