"""The comparison's wait for keep-alive to end a baseline's instances (they are billed while
alive): it returns only once the node runs none and the billing has every one's end."""
from __future__ import annotations

from typing import Any

import pytest

import slfaas.bench.compare as compare
import slfaas.client as client
from slfaas.billing.records import InstanceUsage
from slfaas.client import CliError


def _life(end_ts: float | None) -> InstanceUsage:
    return InstanceUsage("i-1", "f", "$LATEST", "n", "cpu", "cpu", 1024, 10.0, end_ts, 11.0, None, False, 1)


def _script(monkeypatch: pytest.MonkeyPatch, steps: list[tuple[Any, Any]]) -> list[int]:
    """Each poll takes the next (node state or exception, instance lives) step."""
    polls = [0]

    def api(_endpoint: str, _method: str, _path: str, **_kw: Any) -> Any:
        state, _ = steps[min(polls[0], len(steps) - 1)]
        polls[0] += 1
        if isinstance(state, Exception):
            raise state
        return {"Instances": [{"state": state}] if state else []}

    def lives(_endpoint: str, _since: float | None = None) -> list[InstanceUsage]:
        return steps[min(polls[0] - 1, len(steps) - 1)][1]
    monkeypatch.setattr(client, "api", api)
    monkeypatch.setattr(compare, "fetch_instances", lives)
    monkeypatch.setattr(compare.time, "sleep", lambda _s: None)
    return polls


def test_waits_for_the_node_and_for_every_end_seen_to_be_metered(monkeypatch: pytest.MonkeyPatch) -> None:
    polls = _script(monkeypatch, [
        ("IDLE", [_life(None)]),            # alive on the node
        ("STOPPING", [_life(None)]),        # stopping: the node runs none, its end not metered yet
        (CliError("timed out"), []),        # a failed poll: tried again
        ("", []),                           # between the meter's live list and its stored record
        ("", [_life(42.0)]),                # ended and metered
    ])
    said: list[str] = []
    compare._wait_instances_ended("http://x", 0.0, 60.0, said.append, "no-sharing")
    assert polls[0] == 5 and len(said) == 1 and "waiting up to 60 s" in said[0]


def test_gives_up_at_its_deadline_and_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    polls = _script(monkeypatch, [("IDLE", [_life(None)])])
    said: list[str] = []
    compare._wait_instances_ended("http://x", 0.0, 0.0, said.append, "no-sharing")
    assert polls[0] == 1 and "still alive after 0 s" in said[-1]
