"""Shared execution on the node: functions that opt in are placed on their backbone's shared
runtime (a platform spec, the shared capacity), each delivery names its adapter, and the
runtime may fetch only the adapters of invocations it was handed (real Runtime API)."""
from __future__ import annotations

import json
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from slfaas.functions.runtime_client import AdapterUnavailable, RuntimeClient
from slfaas.gpu_node.config import NodeConfig
from slfaas.gpu_node.dispatch import Dispatcher
from slfaas.gpu_node.lifecycle.instance import Instance, InstanceState
from slfaas.gpu_node.lifecycle.runtime_env import runtime_env
from slfaas.gpu_node.lifecycle.shared_runtime import shared_spec_factory
from slfaas.gpu_node.lifecycle.table import InstanceTable
from slfaas.gpu_node.policy.scheduling import FcfsScheduler
from slfaas.gpu_node.runtime_api import RuntimeApiServer
from slfaas.runtime_contract import ENV_SHARED_EXECUTION
from tests.gpu_node.fakes import make_request, make_spec


def _specs(tiny_assets):  # type: ignore[no-untyped-def]
    a = replace(make_spec(tiny_assets.base, tiny_assets.adapter_a, name="a"), shared_execution=True)
    b = replace(make_spec(tiny_assets.base, tiny_assets.adapter_b, name="b", revision="r2"), shared_execution=True)
    return a, b


def test_shared_functions_are_placed_on_one_platform_runtime(tmp_path: Path, tiny_assets) -> None:  # type: ignore[no-untyped-def]
    a, b = _specs(tiny_assets)
    assert a.pool_key == b.pool_key != (a.name, a.revision_id)
    table = InstanceTable()
    d = Dispatcher(FcfsScheduler(), table, 8, stop=lambda i: None,
                   shared_spec=shared_spec_factory(NodeConfig(data_dir=tmp_path, shared_max_batch_size=4)))
    first = d.submit(make_request(a))
    inst = first.instance
    assert first.cold and inst.function.is_shared_runtime and inst.capacity == 4
    assert list(inst.function.code_dir.iterdir()) == []          # it sees no function's code
    env = runtime_env(inst.function, inst.instance_id, Path("/tmp/x.sock"), "cpu")
    assert env[ENV_SHARED_EXECUTION] == "1"
    assert runtime_env(replace(a, environment={ENV_SHARED_EXECUTION: "1"}, shared_execution=False), "i",
                       Path("/tmp/x.sock"), "cpu")[ENV_SHARED_EXECUTION] == "0"   # a function cannot claim it
    with inst._lock:
        inst._move(InstanceState.BUSY)                           # its runtime asked for work
    second = d.submit(make_request(b))
    assert second.instance is inst and not second.cold           # another function, the same runtime
    d.close()


def test_deliveries_name_their_adapter_and_only_handed_adapters_can_be_fetched(tiny_assets) -> None:  # type: ignore[no-untyped-def]
    a, b = _specs(tiny_assets)
    sock_dir = Path(tempfile.mkdtemp(prefix="slfaas-s-"))
    inst = Instance("shared-1", shared_spec_factory(NodeConfig(data_dir=sock_dir))(a), capacity=2)
    api = RuntimeApiServer(sock_dir / "i.sock", inst).start()
    client = RuntimeClient(str(sock_dir / "i.sock"))
    try:
        with inst._lock:
            inst._move(InstanceState.IDLE)
        assert inst.reserve("x")
        req = make_request(a)
        caller = threading.Thread(target=lambda: inst.run(req, False, time.time()))
        caller.start()
        inv = client.next()
        assert inv.adapter_id == a.adapter_id != b.adapter_id
        config, weights = client.adapter(inv.adapter_id)
        assert config == json.loads((tiny_assets.adapter_a / "adapter_config.json").read_text())
        assert weights == (tiny_assets.adapter_a / "adapter_model.safetensors").read_bytes()
        with pytest.raises(AdapterUnavailable, match="404"):
            client.adapter(b.adapter_id)                        # no invocation of b was handed to it
        with pytest.raises(AdapterUnavailable):
            client.adapter("../../etc/passwd")
        client.respond(inv.request_id, b'{"ok": true}')
        caller.join(10)
    finally:
        api.close()
