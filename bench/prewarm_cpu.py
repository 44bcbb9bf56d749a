"""Cold starts on CPU, interleaved in one server: a pre-warmed runtime vs a fresh process vs a
warm invocation (the tiny random Llama; what a GPU run measures at scale, bench/prewarm_gpu.py).

One real ``slfaas server --device cpu --prewarm-min 1``. Each round deploys two never-invoked
functions with the same adapter and invokes each once, in alternating order, with warm
invocations of a long-lived function before, between and after:

* *pre-warmed*: the function's first invocation takes the pre-warmed runtime (backbone attached,
  empty LoRA slots, warm-up done) and copies its adapter in;
* *fresh*: the function sets a variable that torch reads at import (``TORCH_…``), so no runtime
  that imported without it may serve it: a new process starts, imports and attaches;
* *warm*: an idle instance of a function invoked before.

Before each round the pool is full and nothing is starting (the steady state a pre-warmed cold
start relies on). Latency is the buffered ``Invoke`` as boto3 sees it, one token generated.
Every cold start's preload tier is read back from its usage record, so a run in which the
mechanism did not do what the labels say fails instead of reporting.

    python bench/prewarm_cpu.py [--rounds 7] [--warm 5] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from slfaas.client import api, lambda_client, zip_adapter
from slfaas.testing.serverproc import ServerProcess
from slfaas.testing.tinymodels import make_adapter, make_base_model

EVENT = json.dumps({"prompt": "the quick brown fox", "max_tokens": 1, "temperature": 0}).encode()


def _wait_pool(url: str, timeout_s: float = 300) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        pools = [p for p in api(url, "GET", "/slfaas/v1/node")["Pools"] if p["name"] == "prewarmed"]
        if pools and all(p["ready"] == p["held"] >= max(1, p["target"]) for p in pools):
            return time.monotonic() - t0
        time.sleep(0.2)
    raise RuntimeError(f"the pre-warmed pool did not fill in {timeout_s:.0f} s")


def _deploy(client, name: str, code: bytes, env: dict[str, str] | None = None) -> None:  # type: ignore[no-untyped-def]
    client.create_function(FunctionName=name, Runtime="slfaas-lora", Role="arn:aws:iam::000000000000:role/bench",
                           Code={"ZipFile": code}, MemorySize=2048, Timeout=300, Environment={"Variables": env or {}})
    client.get_waiter("function_active_v2").wait(FunctionName=name, WaiterConfig={"Delay": 0.2, "MaxAttempts": 300})


def _invoke_ms(client, name: str) -> tuple[float, str]:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    resp = client.invoke(FunctionName=name, Payload=EVENT)
    body = resp["Payload"].read()
    ms = (time.perf_counter() - t0) * 1000
    if "FunctionError" in resp:
        raise RuntimeError(f"{name}: {body[:500]!r}")
    return ms, resp["ResponseMetadata"]["RequestId"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--warm", type=int, default=5, help="warm invocations at each of the three points of a round")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if args.rounds < 1 or args.warm < 1:
        ap.error("--rounds and --warm must be at least 1")

    work = Path(tempfile.mkdtemp(prefix="slfaas-prewarm-cpu-"))
    base = make_base_model(work / "base")
    code = zip_adapter(make_adapter(base, work / "adapter", seed=1))
    server = ServerProcess(work / "data", "--device", "cpu", "--keep-alive-s", "3600", "--prewarm-min", "1")
    samples: dict[str, list[float]] = {"prewarmed": [], "fresh": [], "warm": []}
    tiers: dict[str, list[str]] = {"prewarmed": [], "fresh": []}
    try:
        client = lambda_client(server.url)
        _deploy(client, "warm", code)
        _invoke_ms(client, "warm")
        for k in range(args.rounds):
            kinds = ["prewarmed", "fresh"] if k % 2 == 0 else ["fresh", "prewarmed"]
            for kind in kinds:
                samples["warm"] += [_invoke_ms(client, "warm")[0] for _ in range(args.warm)]
                name = f"{kind}-{k}"
                _deploy(client, name, code, {"TORCH_SLFAAS_BENCH_FRESH": "1"} if kind == "fresh" else None)
                _wait_pool(server.url)
                ms, rid = _invoke_ms(client, name)
                samples[kind].append(ms)
                usage = {u["request_id"]: u for u in api(server.url, "GET", "/slfaas/v1/cost/usage")["Usage"]}
                tiers[kind].append(usage[rid]["preload_tier"])
            samples["warm"] += [_invoke_ms(client, "warm")[0] for _ in range(args.warm)]
            print(f"round {k + 1}/{args.rounds}: pre-warmed {samples['prewarmed'][-1]:.0f} ms, fresh "
                  f"{samples['fresh'][-1]:.0f} ms, warm median so far {statistics.median(samples['warm']):.0f} ms",
                  flush=True)
    finally:
        server.stop()
    if set(tiers["prewarmed"]) != {"prewarmed"} or set(tiers["fresh"]) != {"cold"}:
        print(f"the cold starts did not come from where their labels say: {tiers}", file=sys.stderr)
        return 1
    med = {k: statistics.median(v) for k, v in samples.items()}
    result = {"command": " ".join(["python", "bench/prewarm_cpu.py", *sys.argv[1:]]), "samples_ms": samples,
              "tiers": tiers, "median_ms": med, "fresh_over_prewarmed": med["fresh"] / med["prewarmed"],
              "prewarmed_over_warm": med["prewarmed"] / med["warm"]}
    print(f"\n{'invocation':28} {'median':>10}")
    for label, key in (("cold, pre-warmed runtime", "prewarmed"), ("cold, fresh process", "fresh"),
                       ("warm", "warm")):
        print(f"{label:28} {med[key]:8.0f}ms")
    print(f"fresh ÷ pre-warmed {result['fresh_over_prewarmed']:.1f}×, pre-warmed ÷ warm "
          f"{result['prewarmed_over_warm']:.2f}×")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
