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
