"""Cold starts on a GPU: pre-warmed runtimes vs an imports-only warm pool vs a fresh process.

One command on the GPU machine (random-weight Llama-2-7B shape, fp16, r=16 q/v adapters,
512-token prompt, 16 greedy tokens; no downloads):

    python bench/prewarm_gpu.py [--out DIR] [--sequential 8] [--burst 16] [--compare 2]

1. A server keeping ``--burst`` runtimes pre-warmed (backbone attached, empty LoRA slots,
   kernels warm). ``--sequential`` never-invoked functions are cold-started one after another
   through InvokeWithResponseStream: client time to the first token, the runtime's first
   prefill against its warm ones, where runtime and adapter came from, the init phases, the
   adapter's copy into the slots; greedy outputs against in-process PEFT. Then, the pool
   refilled, ``--burst`` never-invoked functions at once: every first token's time.
2. The same cold starts (``--compare`` of them) on a server with an imports-only warm pool
   and on one with nothing pre-loaded (fresh processes).
Prints a table; writes results.json under --out.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from gpu_assets import GEN_TOKENS, REF_SCRIPT, make_adapters, make_checkpoint, make_prompt, say

from slfaas.client import api, lambda_client, zip_adapter
from slfaas.testing.serverproc import ServerProcess

COMMON = ("--keep-alive-s", "3600", "--init-timeout-s", "480", "--verify-interval-s", "0",
          "--max-instances", "96", "--slot-modules", "q_proj,v_proj", "--slot-rank", "16")
NOTHING_PREWARMED = ("--prewarm-min", "0", "--prewarm-budget-mb", "0")


def _deploy(client, names: list[str], adapters: list[Path]) -> None:  # type: ignore[no-untyped-def]
    for name, adapter in zip(names, adapters):
        client.create_function(FunctionName=name, Runtime="slfaas-lora", Role="arn:aws:iam::0:role/x",
                               Code={"ZipFile": zip_adapter(adapter)}, Timeout=600, MemorySize=8192)
    for name in names:
        client.get_waiter("function_active_v2").wait(FunctionName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 600})


def _stream(client, name: str, event: bytes) -> dict:  # type: ignore[no-untyped-def]
    """Client-observed time to the first token and to the end, and the text."""
    t0 = time.perf_counter()
    resp = client.invoke_with_response_stream(FunctionName=name, Payload=event)
    first = None
    text = b""
    error = None
    for ev in resp["EventStream"]:
        if "PayloadChunk" in ev:
            if first is None:
                first = (time.perf_counter() - t0) * 1000
            text += ev["PayloadChunk"]["Payload"]
        elif "InvokeComplete" in ev and ev["InvokeComplete"].get("ErrorCode"):
            error = ev["InvokeComplete"]
    return {"ttft_ms": first, "e2e_ms": (time.perf_counter() - t0) * 1000, "text": text.decode("utf-8", "replace"),
            "error": error}


def _wait_ready(url: str, n: int, timeout_s: float = 420) -> float:
    """Until at least ``n`` runtimes are pre-warmed and none is starting: the steady state a
    cold start meets when its function was not expected this very second (runtimes that
    import and warm up compete for the CPU and the GPU; the burst measures that case)."""
    t0 = time.time()
    while time.time() - t0 < timeout_s:
        pools = [p for p in api(url, "GET", "/slfaas/v1/node")["Pools"] if p["name"] == "prewarmed"]
        ready, held, target = (sum(p[k] for p in pools) for k in ("ready", "held", "target"))
        if ready >= n and ready == held >= target:
            return time.time() - t0
        time.sleep(0.5)
    raise RuntimeError(f"fewer than {n} pre-warmed runtimes, or some still starting, after {timeout_s:.0f} s")


def _records(url: str, name: str) -> list[dict]:
    return sorted(api(url, "GET", f"/slfaas/v1/invocations?function={name}")["Invocations"], key=lambda r: r["start_ts"])


def _usage(url: str) -> dict[str, dict]:
    return {u["request_id"]: u for u in api(url, "GET", "/slfaas/v1/cost/usage")["Usage"]}


def prewarmed_phase(args, adapters, prompt, ref, out) -> dict:  # type: ignore[no-untyped-def]
    n_seq, n_burst = args.sequential, args.burst
    server = ServerProcess(Path(tempfile.mkdtemp(prefix="slfaas-prewarm-")), "--device", args.device, *COMMON,
                           "--prewarm-min", str(n_burst), "--prewarm-budget-mb", "200000")
    res: dict = {}
    try:
        client = lambda_client(server.url, max_pool_connections=64)
        seq = [f"seq-{k}" for k in range(n_seq)]
        burst = [f"burst-{k}" for k in range(n_burst)]
        _deploy(client, seq + burst, adapters[: n_seq + n_burst])
        res["fill_s"] = _wait_ready(server.url, n_burst)
        say(f"{n_burst} runtimes pre-warmed after {res['fill_s']:.0f} s")
        (out / "node-filled.json").write_text(json.dumps(api(server.url, "GET", "/slfaas/v1/node"), indent=1))
        event = json.dumps({"prompt": prompt, "max_tokens": GEN_TOKENS, "temperature": 0}).encode()
        warm_event = json.dumps({"prompt": prompt, "max_tokens": GEN_TOKENS, "temperature": 0,
                                 "return_tokens": True}).encode()
        cold = []
        for k, name in enumerate(seq):
            c = _stream(client, name, event)
            if c["ttft_ms"] is None or c["error"]:
                log_text = api(server.url, "GET", f"/slfaas/v1/functions/{name}/logs")
                (out / f"{name}.log").write_text(str(log_text))
                say(f"{name} failed: {c['error']}; its log:\n{str(log_text)[-6000:]}")
                raise RuntimeError(f"{name}: {c['error']}")
            warm = [json.loads(client.invoke(FunctionName=name, Payload=warm_event)["Payload"].read())
                    for _ in range(5)]
            recs = _records(server.url, name)
            c.update(runtime_ttft_ms=recs[0]["ttft_ms"], warm_runtime_ttft_ms=[r["ttft_ms"] for r in recs[1:]],
                     cold_request=recs[0]["request_id"], warm_tokens=warm[0]["tokens"])
            if ref:
                c.update(greedy_equal=warm[0]["tokens"] == ref[k]["tokens"], streamed_text_equal=c["text"] == ref[k]["text"])
            cold.append(c)
            say(f"{name}: first token {c['ttft_ms']:.0f} ms (runtime {c['runtime_ttft_ms']:.0f} ms, warm "
                f"{statistics.median(c['warm_runtime_ttft_ms']):.0f} ms), greedy equal {c.get('greedy_equal')}")
        usage = _usage(server.url)
        node = api(server.url, "GET", "/slfaas/v1/node")
        (out / "node-sequential.json").write_text(json.dumps(node, indent=1))
        facts = {i["function_name"]: i["init_report"] for i in node["Instances"]}
        for c, name in zip(cold, seq):
            u = usage.get(c.pop("cold_request"), {"preload_tier": "?", "adapter_tier": "?", "init_phases_s": {},
                                                   "init_device_s": None})
            c.update(preload_tier=u["preload_tier"], adapter_tier=u["adapter_tier"], init_phases_s=u["init_phases_s"],
                     init_device_s=u["init_device_s"], specialise_s=facts.get(name, {}).get("specialise_s"),
                     slot_path=facts.get(name, {}).get("slot_path"))
        if cold:
            ttfts = [c["ttft_ms"] for c in cold]
            ratios = [c["runtime_ttft_ms"] / statistics.median(c["warm_runtime_ttft_ms"]) for c in cold]
            res["sequential"] = {"cold": cold, "ttft_ms_median": statistics.median(ttfts), "ttft_ms_max": max(ttfts),
                                 "first_vs_warm_runtime_ttft_ratio_max": max(ratios),
                                 "specialise_ms": [round(1000 * (c["specialise_s"] or 0), 2) for c in cold],
                                 "greedy_equal": all(c.get("greedy_equal") for c in cold) if ref else None,
                                 "tiers": node["Tiers"]}
        res["refill_s"] = _wait_ready(server.url, n_burst)
        timeline: list[dict] = []
        done = threading.Event()

        def sample() -> None:   # the node's pools and instances while the burst runs
            t0 = time.perf_counter()
            while not done.wait(0.5):
                node = api(server.url, "GET", "/slfaas/v1/node")
                timeline.append({"t_s": round(time.perf_counter() - t0, 2),
                                 "pools": [(p["name"], p["held"], p["ready"]) for p in node["Pools"]],
                                 "states": dict(Counter(i["state"] for i in node["Instances"]))})
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        with ThreadPoolExecutor(n_burst) as pool:
            got = list(pool.map(lambda name: _stream(client, name, event), burst))
        done.set()
        sampler.join()
        time.sleep(1.0)   # streamed invocations are recorded as their streams close
        usage = _usage(server.url)
        first = [r[0] if (r := _records(server.url, name)) else {} for name in burst]
        facts = {i["function_name"]: i["init_report"] for i in api(server.url, "GET", "/slfaas/v1/node")["Instances"]}
        res["burst"] = {"n": n_burst, "ttft_ms": [g["ttft_ms"] for g in got], "e2e_ms": [g["e2e_ms"] for g in got],
                        "ttft_ms_max": max(g["ttft_ms"] or 1e9 for g in got),
                        "preload_tiers": [usage.get(r.get("request_id"), {}).get("preload_tier", "?") for r in first],
                        "runtime_ttft_ms": [r.get("ttft_ms") for r in first],
                        "init_phases_s": [usage.get(r.get("request_id"), {}).get("init_phases_s") for r in first],
                        "specialise_s": [facts.get(name, {}).get("specialise_s") for name in burst],
                        "node_timeline": timeline, "errors": [g["error"] for g in got if g["error"]]}
        tiers = res["burst"]["preload_tiers"]
        say(f"burst of {n_burst}: first tokens max {res['burst']['ttft_ms_max']:.0f} ms, tiers {set(tiers)}")
    finally:
        server.close()
        (out / "server-prewarmed.log").write_text("".join(server.lines[-600:]))
    return res


def compare_phase(args, adapters, prompt, flags: tuple[str, ...], pool: int, label: str, out) -> dict:  # type: ignore[no-untyped-def]
    server = ServerProcess(Path(tempfile.mkdtemp(prefix=f"slfaas-{label}-")), "--device", args.device, *COMMON,
                           *NOTHING_PREWARMED, *flags)
    try:
        client = lambda_client(server.url)
        names = [f"{label}-{k}" for k in range(args.compare)]
        _deploy(client, names, adapters[: args.compare])
        event = json.dumps({"prompt": prompt, "max_tokens": GEN_TOKENS, "temperature": 0}).encode()
        cold = []
        for name in names:
            if pool:   # steady state: a ready generic runtime waits in the pool
                deadline = time.time() + 300
                while time.time() < deadline and not any(
                        p["name"] == "warm-pool" and p["ready"] >= 1 for p in api(server.url, "GET", "/slfaas/v1/node")["Pools"]):
                    time.sleep(0.5)
            cold.append(_stream(client, name, event))
        usage = _usage(server.url)
        recs = [_records(server.url, n)[0] for n in names]
        out_ = {"ttft_ms": [c["ttft_ms"] for c in cold], "ttft_ms_median": statistics.median(c["ttft_ms"] for c in cold),
                "preload_tiers": [usage[r["request_id"]]["preload_tier"] for r in recs],
                "init_phases_s": [usage[r["request_id"]]["init_phases_s"] for r in recs]}
        say(f"{label}: first tokens {out_['ttft_ms']} ms ({out_['preload_tiers']})")
        return out_
    finally:
        server.close()
        (out / f"server-{label}.log").write_text("".join(server.lines[-300:]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.environ.get("OUT", "bench-out"))
    ap.add_argument("--work", default="/tmp/slfaas-gpu-bench")
    ap.add_argument("--sequential", type=int, default=8)
    ap.add_argument("--burst", type=int, default=16)
    ap.add_argument("--compare", type=int, default=2, help="cold starts on the imports-only pool and fresh servers")
    ap.add_argument("--phases", default="prewarmed,pool,fresh")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="a tiny random model (a CPU smoke test of this bench)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work)
    phases = set(args.phases.split(","))
    results: dict = {"args": vars(args)}

    def save() -> None:
        (out / "results.json").write_text(json.dumps(results, indent=1, default=str))

    if args.tiny:
        from slfaas.testing.tinymodels import make_base_model
        base = make_base_model(work / "tiny-base") if not (work / "tiny-base" / "config.json").is_file() \
            else work / "tiny-base"
        prompt = "the quick brown fox jumps over the lazy dog " * 8
    else:
        base = make_checkpoint(work)
        prompt = make_prompt(base)
    adapters = make_adapters(work / ("tiny" if args.tiny else "."), base, args.sequential + args.burst)
    (work / "prompt.txt").write_text(prompt)
    ref = None
    if not args.tiny and args.sequential:
        say("reference greedy outputs (in-process PEFT) ...")
        ref_proc = subprocess.Popen([sys.executable, "-c", REF_SCRIPT, str(base), str(work / "prompt.txt"),
                                     *map(str, adapters[: args.sequential])], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, text=True)
        ref_doc = json.loads(ref_proc.stdout.readline())
        ref_proc.stdin.close()
        ref_proc.wait(120)
        ref = [ref_doc["adapters"][str(a)] for a in adapters[: args.sequential]]
    if "prewarmed" in phases:
        results["prewarmed"] = prewarmed_phase(args, adapters, prompt, ref, out)
        save()
    if "pool" in phases:
        results["imports_only_pool"] = compare_phase(args, adapters, prompt, ("--warm-pool", "1"), 1, "pool", out)
        save()
    if "fresh" in phases:
        results["fresh"] = compare_phase(args, adapters, prompt, (), 0, "fresh", out)
        save()
    p = results.get("prewarmed", {})
    print()
    print(f"{'cold start from':24} {'first token median':>19} {'max':>8}")
    if p.get("sequential"):
        print(f"{'pre-warmed runtime':24} {p['sequential']['ttft_ms_median']:17.0f}ms {p['sequential']['ttft_ms_max']:6.0f}ms")
    if p.get("burst"):
        print(f"{'  burst of ' + str(args.burst):24} {statistics.median(p['burst']['ttft_ms']):17.0f}ms "
              f"{p['burst']['ttft_ms_max']:6.0f}ms")
    for key, label in (("imports_only_pool", "imports-only pool"), ("fresh", "fresh process")):
        if key in results:
            r = results[key]
            print(f"{label:24} {r['ttft_ms_median']:17.0f}ms {max(r['ttft_ms']):6.0f}ms")
    save()
    print(json.dumps(results, indent=1, default=str)[:20000])
    return 0


if __name__ == "__main__":
    sys.exit(main())
