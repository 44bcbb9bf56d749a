"""Several serving policies run for real on the same slice: for each, a fresh server started
with the policy's flags (``slfaas.testing.serverproc.ServerProcess``), the same functions
deployed with the policy's settings, the same workload replayed while the node is sampled,
then the run's billing records read back and priced on one definition
(``slfaas.billing.policy_costs``). The comparison is written by ``slfaas.bench.compare_report``."""
from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from slfaas.billing.policy_costs import PolicyCost, policy_cost
from slfaas.billing.prices import default_prices, load_prices
from slfaas.billing.records import InstanceUsage, NodeUsage, UsageRecord
from slfaas.bench.billing_client import fetch_instances, fetch_nodes, fetch_usage
from slfaas.bench.errors import BenchError
from slfaas.bench.policies import CommonSettings, Policy, ServerFeatures, make_policy
from slfaas.bench.run import Progress, ReplayOptions, ReplayResult, Workload, replay
from slfaas.bench.sampler import NodeSample, NodeSampler
from slfaas.bench.server import deploy_functions

log = logging.getLogger(__name__)

POOL_READY_TIMEOUT_S = 180.0
REAP_GRACE_S = 30.0     # beyond the keep-alive: the reaper's tick, an instance's stop


@dataclass(frozen=True)
class CompareSpec:
    policies: tuple[str, ...]
    adapters: tuple[Path, ...]             # function i is deployed from adapter i % len(adapters)
    common: CommonSettings = CommonSettings()
    speedup: float = 1.0
    max_in_flight: int = 256
    retry_throttled_s: float = 600.0       # a throttled request waits (retries) this long: "wait or evict"
    sample_interval_s: float = 0.5
    prices_file: Path | None = None
    work_dir: Path | None = None           # servers' data dirs (a temporary directory if None)
    server_start_timeout_s: float = 300.0


@dataclass(frozen=True)
class PolicyRun:
    policy: Policy
    result: ReplayResult
    usage: tuple[UsageRecord, ...]          # the run's invocations' billing records
    instances: tuple[InstanceUsage, ...]    # instances alive in the window
    nodes: tuple[NodeUsage, ...]
    samples: tuple[NodeSample, ...]
    since_ts: float                        # the measurement window: first arrival ...
    until_ts: float                        # ... to the last response
    cost: PolicyCost
    device_type: str
    device_total_mb: float | None
    checks: dict[str, int] = field(default_factory=dict)   # records that do not match the server's
    server_log: str = ""

    @property
    def cold_by_source(self) -> dict[str, int]:
        """Cold starts by where their runtime came from (prewarmed, pool, cold)."""
        return dict(sorted(Counter(u.preload_tier for u in self.usage if u.cold_start).items()))


@dataclass(frozen=True)
class Comparison:
    workload: dict[str, Any]
    common: CommonSettings
    features: ServerFeatures
    runs: tuple[PolicyRun, ...]
    started_unix: float


def probe_features() -> ServerFeatures:
    """What the server this harness starts can do: the SLO scheduler's flag in its help, the
    shared-execution setting among the function settings it accepts."""
    from slfaas.faas.function_settings import SETTING_NAMES
    from slfaas.testing.serverproc import ROOT

    out = subprocess.run([sys.executable, "-m", "slfaas.cli.main", "server", "--help"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    return ServerFeatures(slo_scheduler="--scheduler" in out.stdout,
                          shared_execution="SLFAAS_SHARED_EXECUTION" in SETTING_NAMES,
                          shared_batch_size="--shared-batch-size" in out.stdout)


def run_comparison(workload: Workload, spec: CompareSpec, *, progress: Progress | None = None,
                   say: Callable[[str], None] = lambda _m: None) -> Comparison:
    features = probe_features()
    started = time.time()
    sheet = load_prices(spec.prices_file) if spec.prices_file else default_prices()
    work = Path(spec.work_dir) if spec.work_dir else Path(tempfile.mkdtemp(prefix="slfaas-compare-"))
    runs = []
    for name in spec.policies:
        policy = make_policy(name, spec.common, features)
        for note in policy.notes:
            say(f"{name}: {note}")
        runs.append(run_policy(policy, workload, spec, work / name, sheet, progress, say))
    return Comparison(workload.describe(), spec.common, features, tuple(runs), started)


def run_policy(policy: Policy, workload: Workload, spec: CompareSpec, data_dir: Path, sheet: Any,
               progress: Progress | None = None, say: Callable[[str], None] = lambda _m: None) -> PolicyRun:
    from slfaas.testing.serverproc import ServerProcess

    shutil.rmtree(data_dir, ignore_errors=True)
    args = (*policy.server_args, *(("--prices", str(spec.prices_file)) if spec.prices_file else ()))
    say(f"{policy.name}: starting slfaas server {' '.join(args)}")
    try:
        server = ServerProcess(data_dir, *args, timeout_s=spec.server_start_timeout_s)
    except RuntimeError as exc:
        raise BenchError(f"{policy.name}: the server did not start: {str(exc).strip()[-600:]}") from None
    try:
        c = spec.common
        deploy_functions(server.url, workload.functions, spec.adapters, timeout_s=c.timeout_s, memory_mb=c.memory_mb,
                         environment=policy.function_env)
        if policy.prewarms:
            _wait_pools_ready(server.url, say, policy.name)
        if policy.provisioned:
            say(f"{policy.name}: provisioning (one request per function before the window)")
            _provision(server.url, workload)
        options = ReplayOptions(server.url, spec.speedup, c.slo_ms, spec.max_in_flight,
                                retry_throttled_s=spec.retry_throttled_s)
        say(f"{policy.name}: replaying {len(workload.items)} requests")
        with NodeSampler(server.url, spec.sample_interval_s) as sampler:
            result = replay(workload, options, progress=progress)
        result = replace(result, extra={"policy": policy.name})
        # the window: from the slice's first arrival to its last arrival or response, whichever is later
        ends = [r.end_s for r in result.records if r.end_s is not None] + [r.scheduled_s for r in result.records]
        since = result.started_unix
        until = since + (max(ends) if ends else result.wall_s)
        lives_until = None
        if policy.billing == "container" and c.bill_keep_alive:
            lives_until = max(until, _wait_instances_ended(server.url, since, c.keep_alive_s + REAP_GRACE_S, say,
                                                            policy.name))
        ids = [r.request_id for r in result.records if r.request_id]
        usage = fetch_usage(server.url, ids)
        instances = fetch_instances(server.url, since)
        nodes = fetch_nodes(server.url)
        total_mb = next((s.device_total_mb for s in sampler.samples if s.device_total_mb), None)
        device_type = nodes[-1].device_type if nodes else (usage[0].device_type if usage else "cpu")
        cost = policy_cost(policy.billing, sheet, device_type=device_type, memory_mb=c.memory_mb, since_ts=since,
                           until_ts=until, usage=usage, instances=instances, nodes=nodes, device_total_mb=total_mb,
                           lives_until_ts=lives_until)
        checks = _checks(result, usage)
        say(f"{policy.name}: {result.summary.completed}/{result.summary.requests} completed, "
            f"{result.summary.cold_starts} cold starts, user ${cost.user_usd:.6f}, provider ${cost.provider_usd:.6f}")
        return PolicyRun(policy, result, tuple(usage), tuple(instances), tuple(nodes), tuple(sampler.samples), since,
                         until, cost, device_type, total_mb, checks)
    finally:
        server.stop()
        (data_dir / "server.log").write_text("".join(server.lines[-2000:]))


def _checks(result: ReplayResult, usage: list[UsageRecord]) -> dict[str, int]:
    """How many of the run's records do not match the server's own: no invocation record, no
    usage record, other token counts."""
    billed = {u.request_id for u in usage}
    ok = [r for r in result.records if r.ok]
    return {
        "without_server_record": sum(1 for r in result.records if r.request_id and r.server_status is None),
        "without_usage_record": sum(1 for r in ok if r.request_id not in billed),
        "token_mismatches": sum(1 for r in ok if (r.server_prompt_tokens, r.server_completion_tokens)
                                != (r.prompt_tokens, r.output_tokens)),
    }


def _wait_instances_ended(endpoint: str, since_ts: float, limit_s: float, say: Callable[[str], None],
                          name: str) -> float:
    """Wait (at most ``limit_s``) until the node has ended every instance, as its keep-alive
    does, and its billing has every one's end (the node lists an instance as stopping before
    its end is metered; an instance is counted once seen, so one between the meter's live list
    and its stored record is waited for); returns when waiting stopped (unix time). A failed
    poll is tried again until the deadline. A container platform bills the keep-alive."""
    from slfaas.client import CliError, api

    say(f"{name}: waiting up to {limit_s:.0f} s for keep-alive to end the instances (billed while alive)")
    deadline = time.monotonic() + limit_s
    seen: set[str] = set()
    while True:
        left_s = deadline - time.monotonic()
        try:
            node = api(endpoint, "GET", "/slfaas/v1/node", timeout_s=max(1.0, min(10.0, left_s)))
            lives = fetch_instances(endpoint, since_ts)
        except (CliError, BenchError) as exc:
            log.warning("%s: reading the node while waiting for keep-alive failed: %s", name, exc)
        else:
            alive = any(i.get("state") in ("STARTING", "IDLE", "BUSY") for i in node.get("Instances", []))
            seen |= {i.instance_id for i in lives}
            ended = {i.instance_id for i in lives if i.end_ts is not None}
            if not alive and seen <= ended:
                return time.time()
        if left_s <= 0:
            say(f"{name}: instances still alive after {limit_s:.0f} s: billed up to now")
            return time.time()
        time.sleep(0.5)


def _wait_pools_ready(endpoint: str, say: Callable[[str], None], name: str) -> None:
    """A policy with pre-warmed runtimes starts measured in its steady state: the preloader has
    planned pre-warmed runtimes for the deployed functions' backbone, and they are all ready."""
    from slfaas.client import api

    deadline = time.monotonic() + POOL_READY_TIMEOUT_S
    while True:
        pools = api(endpoint, "GET", "/slfaas/v1/node").get("Pools", [])
        planned = any(p["name"] == "prewarmed" and p["target"] > 0 for p in pools)
        if planned and all(p["ready"] >= p["target"] for p in pools):
            return
        if time.monotonic() > deadline:
            say(f"{name}: warm pools not full after {POOL_READY_TIMEOUT_S:.0f} s; replaying anyway")
            return
        time.sleep(0.5)


def _provision(endpoint: str, workload: Workload) -> None:
    """Always on: every function's instance started (and served once) before the window."""
    import json
    from concurrent.futures import ThreadPoolExecutor

    from slfaas.bench.server import _boto_error
    from slfaas.client import lambda_client

    client = lambda_client(endpoint, max_pool_connections=max(1, len(workload.functions)))
    event = json.dumps({"prompt": "warm up", "max_tokens": 1, "temperature": 0}).encode()

    def one(name: str) -> None:
        resp = client.invoke(FunctionName=name, Payload=event)
        if resp.get("FunctionError"):
            raise BenchError(f"provisioning {name} failed: {resp['Payload'].read()[:300]!r}")
    try:
        with ThreadPoolExecutor(len(workload.functions)) as pool:
            list(pool.map(one, workload.functions))
    except BenchError:
        raise
    except Exception as exc:
        raise _boto_error(endpoint, exc, "provisioning: ") from None
