"""The docker warm pool: a pre-started generic container (libraries imported) becomes a
function's instance on a cold start, much faster than a fresh container, with the same output
and the same denials as a container that had the function mounted from the start."""
from __future__ import annotations

import hashlib
import re
import time
from urllib.parse import urlparse

import pytest

from tests.conftest import deploy
from tests.docker.conftest import containers_of
from tests.docker.test_docker_server import EVENT, PROBE_HANDLER
from tests.integration._util import instances_of, invoke, wait_for

pytestmark = pytest.mark.slow


def _ready_lines(server) -> int:  # type: ignore[no-untyped-def]
    return sum(1 for line in list(server.output) if re.search(r"warm-pool container \w+ ready", line))


def test_cold_start_from_the_warm_pool(docker_client, live_server_factory, tiny_assets, tmp_path):  # type: ignore[no-untyped-def]
    server = live_server_factory("--sandbox", "docker", "--docker-warm-pool", "1", "--log-level", "info",
                                 data_dir=tmp_path / "pool")
    client = server.client()
    zips = {"pooled": tiny_assets.zip(tiny_assets.adapter_a, extra={"handler.py": PROBE_HANDLER}),
            "neighbour": tiny_assets.zip(tiny_assets.adapter_b)}
    deploy(client, "pooled", zips["pooled"], MemorySize=1536)
    deploy(client, "neighbour", zips["neighbour"])
    wait_for(lambda: _ready_lines(server) >= 1, 120, "the warm-pool container to import its libraries")

    t0 = time.monotonic()
    resp, body = invoke(client, "pooled", EVENT)
    cold_s = time.monotonic() - t0
    assert "FunctionError" not in resp, body
    assert body["metrics"]["cold_start"] is True
    (inst,) = instances_of(server, "pooled")
    assert any(f"instance {inst['instance_id']} from warm-pool container" in line for line in server.output)
    # The imports were paid before the request: specialising costs the adapter, not seconds of imports.
    assert cold_s < 3.0, cold_s

    # Same greedy output as the same adapter in a container started for it (cold path: the pool
    # is refilling), through the built-in generation.
    deploy(client, "fresh", tiny_assets.zip(tiny_assets.adapter_a))
    _, fresh = invoke(client, "fresh", EVENT)
    assert fresh["text"] == body["text"]

    (c,) = [c for c in containers_of(docker_client) if c.name == f"slfaas-{inst['instance_id']}"]
    assert c.labels.get("slfaas.pool") == "1"
    assert c.attrs["HostConfig"]["Memory"] == 1536 << 20  # updated to the function's MemorySize
    assert c.attrs["HostConfig"]["NetworkMode"] == "none" and c.attrs["HostConfig"]["ReadonlyRootfs"] is True

    other_dir = server.data_dir / "code" / hashlib.sha256(zips["neighbour"]).hexdigest()
    assert other_dir.is_dir()
    invoke(client, "neighbour", EVENT)
    _, p = invoke(client, "pooled", {"api_port": urlparse(server.url).port, "other_dir": str(other_dir),
                                     "data_dir": str(server.data_dir)})
    assert p["interfaces"] == ["lo"] and p["uid"] != 0
    assert p["connect_node_api"] != "allowed" and p["connect_outside"] != "allowed"
    assert p["backbone_held"] is True
    assert (p["backbone_write"], p["backbone_reopen_write"]) == ("EBADF", "EPERM")
    assert p["backbone_mmap_write"] in ("EACCES", "EPERM")
    assert p["other_code_dir"] == "ENOENT" and p["other_adapter"] == "ENOENT" and p["data_dir"] == "ENOENT"
    assert "handler.py" in p["own_files"] and "adapter_model.safetensors" in p["own_files"]
    assert p["write_rootfs"] == "EROFS" and p["write_code"] in ("EROFS", "EACCES")
    assert p["docker_socket"] is False
