"""Keep-alive policies driving the node's reaper, with fake sandboxes (real node, instances,
Runtime API): a per-function TTL, and the hybrid histogram policy unloading a function right
after its invocation and pre-warming it before its next one."""
from __future__ import annotations

import time

import pytest

from slfaas.gpu_node.node import Node
from slfaas.gpu_node.types import KeepAliveSpec
from tests.gpu_node.fakes import SIGTERM_CODE, make_request, make_spec, wait_until


def _live(node: Node, name: str) -> list:  # type: ignore[type-arg]
    return [i for i in node.describe().instances if i.function_name == name and i.alive]


def test_a_function_ttl_overrides_the_nodes(make_node, tiny_assets, code_dir) -> None:  # type: ignore[no-untyped-def]
    node, factory = make_node(keep_alive_s=600.0)
    short = make_spec(tiny_assets.base, code_dir, name="short")
    short = type(short)(**{**short.__dict__, "keep_alive": KeepAliveSpec(ttl_s=0.2)})
    long = make_spec(tiny_assets.base, code_dir, name="long")
    r_short = node.invoke(make_request(short))
    r_long = node.invoke(make_request(long))
    assert wait_until(lambda: _live(node, "short") == [], timeout_s=10)
    sb = factory.for_instance(r_short.instance_id)
    assert sb.exit_code == SIGTERM_CODE and sb.stopped_ts is not None
    assert sb.stopped_ts - r_short.end_ts >= 0.2          # kept for its own TTL first
    assert [i.instance_id for i in _live(node, "long")] == [r_long.instance_id]   # the node's 600 s


def _learned(node: Node, spec, gaps_s: list[float], last_end_s: float) -> None:  # type: ignore[no-untyped-def]
    """Feed the node's idle history invocations of 0.1 s separated by ``gaps_s``, the last
    ending at ``last_end_s`` (what the node's events would have recorded)."""
    t = last_end_s - sum(gaps_s) - 0.1 * (len(gaps_s) + 1)
    for gap in [0.0, *gaps_s]:
        t += gap
        node.histories.record(spec, t, t + 0.1)
        t += 0.1


@pytest.mark.parametrize("where", ["node", "function"])
def test_histogram_unloads_after_the_invocation_and_prewarms_before_the_next(  # type: ignore[no-untyped-def]
        make_node, tiny_assets, code_dir, where) -> None:
    """A function invoked every 3-5 s: right after an invocation its instance is stopped (the
    pre-warm window, ~2.7 s from the histogram's head), then a fresh instance is started ahead
    of the next call, which finds it warm; unused, it is stopped again after the keep-alive
    window (the histogram's tail). Chosen by the node's flag or by the function's settings."""
    if where == "node":
        node, factory = make_node(keep_alive_s=600.0, keep_alive_policy="histogram", keep_alive_bin_s=0.25)
        spec = make_spec(tiny_assets.base, code_dir)
    else:
        node, factory = make_node(keep_alive_s=600.0)
        base = make_spec(tiny_assets.base, code_dir)
        spec = type(base)(**{**base.__dict__, "keep_alive": KeepAliveSpec("histogram", bin_width_s=0.25)})
    gaps = [3.0 + 2.0 * k / 14 for k in range(15)]
    _learned(node, spec, gaps, last_end_s=time.time() - 4.0)
    first = node.invoke(make_request(spec))
    assert first.cold_start is True
    state = node.histories.state(spec)
    assert state.history is not None and state.history.samples == 16
    idle_since = state.history.idle_since_s
    assert idle_since is not None and idle_since >= first.end_ts - 0.5

    # unloaded right away, long before the pre-warm window ends
    assert wait_until(lambda: _live(node, "fn") == [], timeout_s=2.0)
    stopped = factory.for_instance(first.instance_id)
    assert stopped.exit_code == SIGTERM_CODE and stopped.stopped_ts is not None
    assert stopped.stopped_ts - idle_since < 2.0

    # pre-warmed: a new instance, started after the window and before the next arrival
    assert wait_until(lambda: any(i.state == "IDLE" for i in _live(node, "fn")), timeout_s=10)
    [warm] = _live(node, "fn")
    assert warm.started_ts - idle_since >= 2.5 and warm.invocations == 0
    second = node.invoke(make_request(spec))
    assert second.cold_start is False and second.instance_id == warm.instance_id

    # not invoked again: unloaded at once (a new idle period), pre-warmed again, then let go
    assert wait_until(lambda: factory.for_instance(warm.instance_id).exited, timeout_s=2.0)
    assert wait_until(lambda: any(i.state == "IDLE" for i in _live(node, "fn")), timeout_s=10)
    [again] = _live(node, "fn")
    assert again.instance_id != warm.instance_id
    assert wait_until(lambda: _live(node, "fn") == [], timeout_s=10)   # the keep-alive window ended
    ended = factory.for_instance(again.instance_id)
    assert ended.stopped_ts is not None and ended.stopped_ts - second.end_ts > 5.0
    time.sleep(0.5)   # past its keep-alive window, nothing is pre-warmed again until it is invoked
    assert _live(node, "fn") == []


def test_histogram_without_enough_history_keeps_the_fallback_ttl(  # type: ignore[no-untyped-def]
        make_node, tiny_assets, code_dir) -> None:
    node, factory = make_node(keep_alive_s=0.3, keep_alive_policy="histogram", keep_alive_bin_s=0.25)
    spec = make_spec(tiny_assets.base, code_dir)
    r = node.invoke(make_request(spec))
    assert wait_until(lambda: _live(node, "fn") == [], timeout_s=10)
    sb = factory.for_instance(r.instance_id)
    assert sb.stopped_ts is not None and sb.stopped_ts - r.end_ts >= 0.3
    assert node.histories.state(spec).history is not None   # one invocation: no idle sample yet
    assert node.histories.state(spec).history.samples == 0   # type: ignore[union-attr]
