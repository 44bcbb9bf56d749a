"""NodeSet over real in-process nodes (fake sandboxes whose runtimes speak the real Runtime API):
placement across nodes, fan-out, merged logs, lost and joining nodes."""
from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from slfaas.errors import TooManyRequests
from slfaas.gpu_node.cluster.nodeset import NODE_LOST, NodeSet
from slfaas.gpu_node.config import NodeConfig
from slfaas.gpu_node.node import Node
from slfaas.gpu_node.resources.backbone import BackboneOwner
from tests.gpu_node.cluster.killable import KillableNode
from tests.gpu_node.fakes import FakeSandboxFactory, make_request, make_spec, wait_until


class Cluster:
    def __init__(self, root: Path):
        self.root = root
        self.nodes: list[KillableNode] = []
        self.factories: list[FakeSandboxFactory] = []
        self.lost: list[tuple[str, str]] = []
        self.set = NodeSet(on_lost=lambda node_id, why: self.lost.append((node_id, why)))

    def add(self, **config) -> KillableNode:  # type: ignore[no-untyped-def]
        factory = FakeSandboxFactory()
        node = Node(NodeConfig(data_dir=self.root / f"node{len(self.nodes)}", **config), factory, BackboneOwner())
        handle = KillableNode(node)
        self.nodes.append(handle)
        self.factories.append(factory)
        self.set.add(handle)
        return handle

    def where(self, name: str) -> dict[str, int]:
        """Instances of ``name`` per node id (alive ones)."""
        info = self.set.describe()
        return {n.node_id: sum(1 for i in n.instances if i.function_name == name and i.alive) for n in info.nodes}

    def close(self) -> None:
        for n in self.nodes:
            n.killed.clear()
            n.node.shutdown()


@pytest.fixture
def cluster(tmp_path: Path):  # type: ignore[no-untyped-def]
    c = Cluster(tmp_path)
    yield c
    c.close()


@pytest.fixture
def base(tiny_assets) -> Path:  # type: ignore[no-untyped-def]
    return tiny_assets.base


@pytest.fixture
def code_dir(tmp_path: Path) -> Path:
    d = tmp_path / "code" / ("ab" * 32)
    d.mkdir(parents=True)
    return d


def test_prepare_loads_the_backbone_once_on_every_node(cluster, base, code_dir) -> None:  # type: ignore[no-untyped-def]
    a, b = cluster.add(), cluster.add()
    info = cluster.set.prepare(make_spec(base, code_dir))
    assert Path(info.model_path) == base.resolve()
    for n in (a, b):
        assert [bb.model_path for bb in n.node.describe().backbones] == [str(base.resolve())]
    cluster.set.prepare(make_spec(base, code_dir, name="other"))
    assert all(len(n.node.describe().backbones) == 1 for n in (a, b))   # not loaded a second time
    agg = cluster.set.describe()
    assert agg.device == "cpu,cpu" and agg.max_instances == a.node.config.max_instances * 2
    assert [n.node_id for n in agg.nodes] == [a.node_id, b.node_id]
    assert len(agg.backbones) == 2 and {n.state for n in agg.nodes} == {"alive"}


def test_one_node_reports_as_itself(cluster, base, code_dir) -> None:  # type: ignore[no-untyped-def]
    a = cluster.add()
    info = cluster.set.describe()
    assert info.node_id == a.node_id and info.device == "cpu" and [n.node_id for n in info.nodes] == [a.node_id]


def test_functions_spread_over_nodes_and_warm_instances_are_reused(cluster, base, code_dir) -> None:  # type: ignore[no-untyped-def]
    a, b = cluster.add(max_instances=1), cluster.add(max_instances=1)
    f, g = make_spec(base, code_dir, name="f"), make_spec(base, code_dir, name="g")
    cluster.set.prepare(f)
    first = cluster.set.invoke(make_request(f))
    assert first.function_error is None and first.cold_start
    assert cluster.where("f") == {a.node_id: 1, b.node_id: 0}         # a tie: the node that joined first
    assert cluster.set.invoke(make_request(g)).cold_start
    assert cluster.where("g") == {a.node_id: 0, b.node_id: 1}         # a has no free slot: b
    again = cluster.set.invoke(make_request(f))
    assert not again.cold_start and again.instance_id == first.instance_id   # warm beats everything


def test_a_burst_of_one_function_spreads_by_what_runs_where(cluster, base, code_dir) -> None:  # type: ignore[no-untyped-def]
    a, b = cluster.add(max_instances=4), cluster.add(max_instances=4)
    f = make_spec(base, code_dir, name="f")
    cluster.set.prepare(f)
    results: list = []
    threads = [threading.Thread(target=lambda: results.append(cluster.set.invoke(
        make_request(f, {"do": "gate", "gate": "go"})))) for _ in range(4)]
    for t in threads:
        t.start()
    assert wait_until(lambda: sum(len(fa._gates) and fa._entered for fa in cluster.factories) >= 4, 10)
    assert cluster.where("f") == {a.node_id: 2, b.node_id: 2}
    for fa in cluster.factories:
        fa.gate("go").set()
    for t in threads:
        t.join(10)
    assert len(results) == 4 and all(r.function_error is None for r in results)


def test_a_refusing_node_hands_the_request_to_the_next(cluster, base, code_dir) -> None:  # type: ignore[no-untyped-def]
    a, b = cluster.add(), cluster.add()
    f = make_spec(base, code_dir, name="f")
    a.refuse_with = TooManyRequests("full since its summary", "ConcurrentInvocationLimitExceeded")
    assert cluster.set.invoke(make_request(f)).function_error is None
    assert cluster.where("f") == {a.node_id: 0, b.node_id: 1}
    b.refuse_with = TooManyRequests("b full too", "ConcurrentInvocationLimitExceeded")
    with pytest.raises(TooManyRequests, match="full since its summary"):   # b (warm) first, then a
        cluster.set.invoke(make_request(f))


def test_no_node_with_room_is_a_throttle(cluster, base, code_dir) -> None:  # type: ignore[no-untyped-def]
    cluster.add(max_instances=1)
    f = make_spec(base, code_dir, name="f")
    hold = threading.Thread(target=lambda: cluster.set.invoke(make_request(f, {"do": "gate", "gate": "g"})))
    hold.start()
    cluster.factories[0].wait_entered(1)
    with pytest.raises(TooManyRequests) as err:
        cluster.set.invoke(make_request(make_spec(base, code_dir, name="g")))
    assert err.value.reason == "ConcurrentInvocationLimitExceeded"
    cluster.factories[0].gate("g").set()
    hold.join(10)


def test_a_lost_node_fails_its_inflight_invocations_and_gets_no_more_work(cluster, base, code_dir) -> None:  # type: ignore[no-untyped-def]
    a, b = cluster.add(max_instances=2), cluster.add(max_instances=2)
    f = make_spec(base, code_dir, name="f")
    cluster.set.prepare(f)
    box: dict = {}
    t = threading.Thread(target=lambda: box.setdefault("r", cluster.set.invoke(make_request(f, {"do": "gate",
                                                                                                  "gate": "x"}))))
    t.start()
    cluster.factories[0].wait_entered(1)
    a.kill()
    t.join(10)
    lost = box["r"]
    assert lost.function_error == "Unhandled" and lost.error_type == NODE_LOST
    assert json.loads(lost.payload)["errorType"] == NODE_LOST and a.node_id in json.loads(lost.payload)["errorMessage"]
    assert cluster.lost == [(a.node_id, "actor died")]
    for _ in range(3):
        assert cluster.set.invoke(make_request(f)).function_error is None
    info = cluster.set.describe()
    assert [(n.node_id, n.state) for n in info.nodes] == [(a.node_id, "lost"), (b.node_id, "alive")]
    assert info.device == "cpu" and {i.function_name for i in info.instances} == {"f"}
    assert cluster.set.retire("f") >= 1 and cluster.lost == [(a.node_id, "actor died")]   # reported once
    cluster.factories[0].gate("x").set()


def test_a_lost_node_ends_its_streams_with_a_function_error(cluster, base, code_dir) -> None:  # type: ignore[no-untyped-def]
    a = cluster.add()
    f = make_spec(base, code_dir, name="f")
    stream = cluster.set.invoke_stream(make_request(f, {"do": "gate", "gate": "s"}))
    cluster.factories[0].wait_entered(1)
    a.kill()
    assert list(stream) == []
    assert stream.result is not None and stream.result.error_type == NODE_LOST and stream.error is None
    with pytest.raises(TooManyRequests, match="No live node"):
        cluster.set.invoke_stream(make_request(f))
    cluster.factories[0].gate("s").set()


def test_a_node_that_joins_later_loads_the_prepared_backbones_and_takes_work(cluster, base, code_dir) -> None:  # type: ignore[no-untyped-def]
    cluster.add(max_instances=1)
    f, g = make_spec(base, code_dir, name="f"), make_spec(base, code_dir, name="g")
    cluster.set.prepare(f)
    hold = threading.Thread(target=lambda: cluster.set.invoke(make_request(f, {"do": "gate", "gate": "j"})))
    hold.start()
    cluster.factories[0].wait_entered(1)
    with pytest.raises(TooManyRequests):
        cluster.set.invoke(make_request(g))
    late = cluster.add(max_instances=1)
    assert wait_until(lambda: len(late.node.describe().backbones) == 1, 10)
    assert cluster.set.invoke(make_request(g)).function_error is None
    assert cluster.where("g")[late.node_id] == 1
    cluster.factories[0].gate("j").set()
    hold.join(10)


def test_logs_of_all_nodes_merge_in_time_order_and_can_be_followed(cluster, base, code_dir) -> None:  # type: ignore[no-untyped-def]
    a, b = cluster.add(max_instances=1), cluster.add(max_instances=1)
    f, g = make_spec(base, code_dir, name="f"), make_spec(base, code_dir, name="g")
    cluster.set.prepare(f)
    cluster.set.invoke(make_request(g))             # g's instance fills a: f then runs on b
    a.node.write_log("f", "test", "from-a-1")
    r = cluster.set.invoke(make_request(f))
    assert cluster.where("f")[b.node_id] == 1
    a.node.write_log("f", "test", "from-a-2")
    text = cluster.set.logs("f").text
    assert text.index("from-a-1") < text.index(f"START RequestId: {r.request_id}") < text.index("from-a-2")
    start = cluster.set.logs("f", offset=0)
    assert start.text == text
    b.node.write_log("f", "test", "from-b-later")
    a.node.write_log("f", "test", "from-a-later")
    more = cluster.set.logs("f", offset=start.next_offset)
    assert sorted(line.split("] ", 1)[1] for line in more.text.splitlines()) == ["from-a-later", "from-b-later"]
    assert cluster.set.logs("f", offset=more.next_offset).text == ""
    cluster.set.write_log("f", "billing", "budget line")
    assert "budget line" in a.node.logs("f").text     # the control plane's lines: the first live node
    cluster.set.delete_logs("f")
    assert cluster.set.logs("f").text == ""


def test_cancel_goes_to_the_node_running_the_request(cluster, base, code_dir) -> None:  # type: ignore[no-untyped-def]
    cluster.add(), cluster.add()
    f = make_spec(base, code_dir, name="f")
    request = make_request(f, {"do": "hang"})
    box: dict = {}
    t = threading.Thread(target=lambda: box.setdefault("r", cluster.set.invoke(request)))
    t.start()
    assert wait_until(lambda: sum(fa._entered for fa in cluster.factories) == 1, 10)
    assert cluster.set.cancel(request.request_id) is True
    t.join(10)
    assert box["r"].error_type == "Runtime.Cancelled"
    assert cluster.set.cancel("no-such-request") is False


def test_usage_and_verify_cover_every_live_node(cluster, base, code_dir) -> None:  # type: ignore[no-untyped-def]
    _a, b = cluster.add(), cluster.add()
    cluster.set.prepare(make_spec(base, code_dir))
    events = cluster.set.verify()
    assert len(events) == 2 and all(e.ok for e in events)
    assert cluster.set.node_usages() == []          # no meters in this test: nothing to report
    b.kill()
    assert len(cluster.set.verify()) == 1


def test_live_instances_of_every_node_are_listed_together(cluster, base, code_dir) -> None:  # type: ignore[no-untyped-def]
    """What a baseline's container billing reads while its instances are alive: each node's
    meter knows its own, the set lists them all."""
    from slfaas.billing.meter import Meter
    from slfaas.gpu_node.metering import meter_subscriber

    a, b = cluster.add(), cluster.add()
    for n in (a, b):
        n.meter = Meter(n.node_id, "cpu")
        n.node.bus.subscribe(meter_subscriber(n.meter))
    f, g = make_spec(base, code_dir, name="f"), make_spec(base, code_dir, name="g")
    cluster.set.prepare(f)
    cluster.set.prepare(g)
    cluster.set.invoke(make_request(f))
    cluster.set.invoke(make_request(g))
    lives = cluster.set.live_instances()
    assert sorted(i.function_name for i in lives) == ["f", "g"]
    assert {i.node_id for i in lives} <= {a.node_id, b.node_id} and all(i.end_ts is None for i in lives)
    assert all(i.invocations == 1 and i.ready_ts is not None for i in lives)


def _held(cluster: Cluster, name: str) -> list:   # type: ignore[type-arg]
    return [p for p in cluster.set.describe().provisioned if p.function_name == name]


def test_provisioned_concurrency_is_held_on_one_node_and_moves_when_it_is_lost(  # type: ignore[no-untyped-def]
        cluster, base, code_dir) -> None:
    a, b = cluster.add(max_instances=4), cluster.add(max_instances=4)
    f, g = make_spec(base, code_dir, name="f"), make_spec(base, code_dir, name="g")
    cluster.set.prepare(f)
    assert cluster.set.invoke(make_request(g)).function_error is None   # g's idle instance is on a
    cluster.set.provision(f, 2)          # placement's choice: b (the backbone on both, fewer instances)
    assert wait_until(lambda: [p.ready for p in _held(cluster, "f")] == [2], 10)
    assert cluster.where("f") == {a.node_id: 0, b.node_id: 2}
    cluster.set.provision(f, 3)          # a change goes to the node holding it
    assert wait_until(lambda: cluster.where("f") == {a.node_id: 0, b.node_id: 3}, 10)
    warm = cluster.set.invoke(make_request(f))
    assert warm.function_error is None and not warm.cold_start
    b.kill()
    assert cluster.set.describe().nodes[1].state == "lost"   # noticed by the first call that fails
    assert cluster.lost == [(b.node_id, "actor died")]
    assert wait_until(lambda: [(p.requested, p.ready) for p in _held(cluster, "f")] == [(3, 3)], 10)
    assert cluster.where("f") == {a.node_id: 3, b.node_id: 0}
    cluster.set.provision(f, 0)          # released where it is held now: idle ones stop at once
    assert wait_until(lambda: cluster.where("f") == {a.node_id: 0, b.node_id: 0}, 10)
    assert _held(cluster, "f") == []
