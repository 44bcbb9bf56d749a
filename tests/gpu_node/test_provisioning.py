"""Provisioned concurrency on the node, with fake sandboxes: instances started ahead of
requests and held (warm invocations, no keep-alive expiry, no eviction), re-started when they
die, released when the target drops, and a start that finds no room retried."""
from __future__ import annotations

import threading

from slfaas.gpu_node.node import Node
from tests.gpu_node.fakes import SIGTERM_CODE, make_request, make_spec, wait_until


def _held(node: Node, name: str = "fn") -> list:  # type: ignore[type-arg]
    return [i for i in node.describe().instances if i.function_name == name and i.provisioned and i.alive]


def _ready(node: Node, name: str = "fn") -> int:
    return sum(p.ready for p in node.describe().provisioned if p.function_name == name)


def test_provisioned_instances_serve_warm_and_outlive_keep_alive(  # type: ignore[no-untyped-def]
        make_node, tiny_assets, code_dir) -> None:
    node, factory = make_node(keep_alive_s=0.1)
    spec = make_spec(tiny_assets.base, code_dir)
    node.provision(spec, 2)
    [info] = node.describe().provisioned
    assert (info.function_name, info.version, info.requested) == ("fn", "$LATEST", 2)
    assert wait_until(lambda: _ready(node) == 2, timeout_s=10)
    held = {i.instance_id for i in _held(node)}
    assert len(held) == 2 and len(factory.sandboxes) == 2

    results: list = []
    gate = factory.gate("both")
    calls = [threading.Thread(target=lambda: results.append(node.invoke(make_request(spec, {"do": "gate",
                                                                                            "gate": "both"}))))
             for _ in range(2)]
    for t in calls:
        t.start()
    factory.wait_entered(2)   # both running at once, each on a held instance
    gate.set()
    for t in calls:
        t.join(10)
    assert [r.cold_start for r in results] == [False, False]
    assert {r.instance_id for r in results} == held
    # a third at once would have been a cold start; now idle again, past a 0.1 s keep-alive, they stay
    assert not wait_until(lambda: len(_held(node)) < 2, timeout_s=1.0)
    assert {i.instance_id for i in _held(node)} == held and len(factory.sandboxes) == 2


def test_provisioned_instances_are_restarted_and_released(make_node, tiny_assets, code_dir) -> None:  # type: ignore[no-untyped-def]
    node, factory = make_node()
    spec = make_spec(tiny_assets.base, code_dir)
    node.provision(spec, 2)
    assert wait_until(lambda: _ready(node) == 2, timeout_s=10)
    victim = _held(node)[0].instance_id
    factory.for_instance(victim).crash_silently()
    assert wait_until(lambda: _ready(node) == 2 and victim not in {i.instance_id for i in _held(node)},
                      timeout_s=10)
    assert len(factory.sandboxes) == 3

    node.provision(spec, 1)   # fewer: an idle one is stopped
    assert wait_until(lambda: len(_held(node)) == 1, timeout_s=5)
    node.provision(spec, 0)   # released: the node's instance list shrinks
    assert node.describe().provisioned == ()
    assert wait_until(lambda: [i for i in node.describe().instances if i.alive] == [], timeout_s=5)
    assert all(s.exited for s in factory.sandboxes)
    assert [s.exit_code for s in factory.sandboxes if s.spec.instance_id != victim] == [SIGTERM_CODE] * 2


def test_live_instances_are_adopted_and_never_evicted(make_node, tiny_assets, code_dir) -> None:  # type: ignore[no-untyped-def]
    node, factory = make_node(max_instances=2)
    a = make_spec(tiny_assets.base, code_dir, name="a")
    first = node.invoke(make_request(a))
    node.provision(a, 1)   # the warm instance is adopted: nothing new starts
    assert [i.instance_id for i in _held(node, "a")] == [first.instance_id]
    assert len(factory.sandboxes) == 1
    b = node.invoke(make_request(make_spec(tiny_assets.base, code_dir, name="b")))
    # full: c evicts b (idle, least recently used among the evictable), never the provisioned a
    c = node.invoke(make_request(make_spec(tiny_assets.base, code_dir, name="c")))
    assert c.function_error is None
    alive = {i.instance_id for i in node.describe().instances if i.alive}
    assert alive == {first.instance_id, c.instance_id}
    assert factory.for_instance(b.instance_id).exited


def test_no_room_is_reported_and_retried(make_node, tiny_assets, code_dir) -> None:  # type: ignore[no-untyped-def]
    node, factory = make_node(max_instances=1)
    other = make_spec(tiny_assets.base, code_dir, name="other")
    gate = factory.gate("hold")
    busy = threading.Thread(target=lambda: node.invoke(make_request(other, {"do": "gate", "gate": "hold"})))
    busy.start()
    factory.wait_entered(1)
    spec = make_spec(tiny_assets.base, code_dir)
    node.provision(spec, 1)
    [info] = node.describe().provisioned
    assert info.ready == 0 and info.failure and "no room" in info.failure
    gate.set()   # the busy instance goes idle: it is evicted for the provisioned one
    busy.join(10)
    assert wait_until(lambda: _ready(node) == 1, timeout_s=10)
    assert node.describe().provisioned[0].failure is None


def test_an_init_failure_is_reported_and_retried_with_a_delay(make_node, tiny_assets, code_dir) -> None:  # type: ignore[no-untyped-def]
    node, factory = make_node()
    spec = make_spec(tiny_assets.base, code_dir, env={"FAKE_INIT": "error"})
    node.provision(spec, 1)
    assert wait_until(lambda: node.describe().provisioned[0].failures >= 1, timeout_s=10)
    info = node.describe().provisioned[0]
    assert info.ready == 0 and "Runtime.ImportModuleError" in (info.failure or "")
    assert len(factory.sandboxes) <= 2   # retried after a delay, not in a loop


def test_retire_forgets_the_target(make_node, tiny_assets, code_dir) -> None:  # type: ignore[no-untyped-def]
    node, factory = make_node()
    spec = make_spec(tiny_assets.base, code_dir)
    node.provision(spec, 1)
    assert wait_until(lambda: _ready(node) == 1, timeout_s=10)
    node.retire("fn", keep_revision=None)
    assert node.describe().provisioned == ()
    assert wait_until(lambda: [i for i in node.describe().instances if i.alive] == [], timeout_s=5)
    node.provisioner.reconcile()
    assert len(factory.sandboxes) == 1   # not started again
