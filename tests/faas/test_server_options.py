"""The HTTP server's settings derived from ServerConfig (no server started)."""
from __future__ import annotations

from pathlib import Path

import pytest

from slfaas.faas.server import ServerConfig, http_options


def test_invocation_slots_get_threads_of_their_own() -> None:
    opts = http_options(ServerConfig(data_dir=Path("."), threads=8, max_concurrent_invocations=40, idle_timeout_s=10,
                                     connection_limit=500))
    assert opts["threads"] == 48                       # 40 for invocations, 8 that they can never take
    assert opts["channel_timeout"] == 10 and opts["cleanup_interval"] == 5
    assert opts["connection_limit"] == 500
    assert opts["asyncore_use_poll"] is True           # select() stops at descriptor 1024
    assert opts["channel_request_lookahead"] >= 1      # how a disconnected caller is noticed


@pytest.mark.parametrize("field", ["threads", "max_concurrent_invocations", "idle_timeout_s", "connection_limit"])
@pytest.mark.parametrize("value", [0, -1, True, 2.5])
def test_nonsense_is_refused_with_the_flag_name(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"--{field.replace('_', '-')} must be a whole number"):
        http_options(ServerConfig(data_dir=Path("."), **{field: value}))  # type: ignore[arg-type]


@pytest.mark.parametrize("settings, message", [
    ({"keep_alive_s": -1.0}, "--keep-alive-s must be a number of seconds >= 0"),
    ({"keep_alive_s": float("nan")}, "--keep-alive-s must be"),
    ({"keep_alive_bin_s": 0.0}, "--keep-alive-bin-s must be a number of seconds >= 0.01"),
    ({"keep_alive_policy": "lru"}, "unknown keep-alive policy 'lru'"),
    ({"keep_alive_policy": "histogram", "keep_alive_bin_s": 0.01, "keep_alive_range_s": 1e6}, "too many bins"),
])
def test_keep_alive_settings_are_checked_before_anything_starts(settings: dict, message: str) -> None:
    from slfaas.faas.server import check_keep_alive
    from slfaas.gpu_node.config import NodeConfig

    with pytest.raises(ValueError, match=message):
        check_keep_alive(NodeConfig(Path("."), **settings))


def test_the_server_refuses_bad_keep_alive_flags_without_touching_the_data_dir(tmp_path: Path) -> None:
    from slfaas.faas.server import SlfaasServer

    with pytest.raises(ValueError, match="--keep-alive-bin-s"):
        SlfaasServer(ServerConfig(data_dir=tmp_path / "data", port=0, keep_alive_policy="histogram",
                                  keep_alive_bin_s=-2.0))
    assert not (tmp_path / "data").exists()


def test_the_device_memory_bounds_reach_the_node_config() -> None:
    from slfaas.faas.node_setup import _scheduling
    from slfaas.faas.server import ServerConfig
    from slfaas.gpu_node.config import NodeConfig

    config = ServerConfig(data_dir=Path("."), instance_gpu_mb=6144, shared_gpu_mb=28672)
    node = NodeConfig(Path("."), instance_gpu_mb=config.instance_gpu_mb, **_scheduling(config))
    assert node.device_bounds_mb == (6144, 28672)
    assert NodeConfig(Path(".")).device_bounds_mb == (1536, 0)      # a shared runtime: no bound by default
    with pytest.raises(ValueError):
        NodeConfig(Path("."), shared_gpu_mb=-1)
