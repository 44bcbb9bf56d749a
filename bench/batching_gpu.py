"""Batching and arbitration under a burst: many LoRA functions of one backbone on one GPU.

One command on the GPU machine (random-weight Llama-2-7B shape, fp16, r=16 q/v adapters; no
downloads; under 10 minutes):

    python bench/batching_gpu.py [--out DIR] [--functions 16] [--requests 256] [--slo-ms 1000]
    python bench/batching_gpu.py --tiny --device cpu        # CPU smoke test (tiny model, small burst)

Each mode can also run in its own command into the same ``--out`` (``--modes unbatched``, then
``--modes batched``, ...): a later run combines with the modes an earlier one wrote for the same
burst, and the table and ratios cover them all.

``--functions`` functions of one backbone, a burst of ``--requests`` requests at once, each to a
function drawn at random, with prompt and output lengths from the Azure LLM conversation trace
(bench/data, capped at 1024/128), greedy with ``ignore_eos``, TTFT SLO ``--slo-ms`` for all. The
same node (same flags and instance limit, one warm instance per function before the burst) in
three modes, one after another:

* ``unbatched``: ``--scheduler fcfs``, one request per instance at a time (batching off);
* ``batched``: ``--scheduler slo``, ``SLFAAS_MAX_BATCH_SIZE=--max-batch``: per-function
  queues, SLO-aware batches, least-slack arbitration across functions;
* ``cobatched``: ``--scheduler slo`` and every function in shared execution: one platform
  runtime batches requests of all adapters together;
* ``queued`` (only when ``--modes`` names it): ``--scheduler slo`` with batching off, which
  separates what the queues and arbitration are worth from what batching is worth (an FCFS
  node at its instance limit refuses, and evicts one function's idle instance for another's
  request, which the retrying client then pays for in cold starts).

The client retries a 429 after a short pause (as boto3 would; TTFT counts from the burst).
Per mode: goodput (requests meeting the SLO per second), SLO attainment, output tokens/s,
TTFT percentiles, the batch sizes billing recorded and each request's share of its batches'
device time; then greedy outputs of the same probe requests compared across modes. Prints a
table; writes results.json under --out.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from gpu_assets import make_adapters, make_checkpoint, say

from slfaas.bench.prompts import PromptBuilder, load_tokenizer
from slfaas.bench.records import RequestRecord
from slfaas.bench.replayer import Boto3Sender, Clock, WorkItem, run_open_loop
from slfaas.bench.sampler import NodeSampler
from slfaas.bench.summary import summarize
from slfaas.bench.trace import read_azure_csv
from slfaas.bench.workload import PlannedRequest
from slfaas.client import api, lambda_client, zip_adapter
from slfaas.testing.serverproc import ServerProcess

ROOT = Path(__file__).resolve().parents[1]
TRACE = ROOT / "bench" / "data" / "AzureLLMInferenceTrace_conv.csv"
MODES = ("unbatched", "queued", "batched", "cobatched")
DEFAULT_MODES = ("unbatched", "batched", "cobatched")
PROBES = 8


class RetryingSender:
    """Boto3Sender, and a 429 sent again after a pause (jittered, growing to 2 s) until
    ``give_up_s`` after the burst: TTFT still counts from the request's scheduled instant."""

    def __init__(self, inner: Boto3Sender, give_up_s: float, seed: int = 0):
        self.inner = inner
        self.give_up_s = give_up_s
        self.retries = 0
        self._rng = random.Random(seed)
        self._lock = threading.Lock()

    def __call__(self, item: WorkItem, scheduled_s: float, clock: Clock) -> RequestRecord:
        pause_s = 0.25
        while True:
            record = self.inner(item, scheduled_s, clock)
            if record.error_type != "TooManyRequestsException" or clock() > self.give_up_s:
                return record
            with self._lock:
                self.retries += 1
                jitter = self._rng.uniform(0.5, 1.0)
            time.sleep(pause_s * jitter)
            pause_s = min(2.0, pause_s * 2)


def _assets(args: argparse.Namespace, work: Path) -> tuple[Path, list[Path]]:
    if args.tiny:
        from slfaas.testing.tinymodels import make_adapter, make_base_model
        base = work / "tiny-base"
        if not (base / "config.json").is_file():
            make_base_model(base)
        return base, [a if (a := work / f"tiny-adapter-{k}").is_dir() else
                      make_adapter(base, a, seed=100 + k, base_model_name=str(base)) for k in range(args.functions)]
    base = make_checkpoint(work)
    return base, make_adapters(work, base, args.functions)


def _workload(args: argparse.Namespace, base: Path, names: list[str]) -> list[WorkItem]:
    """The first ``--requests`` requests of the trace (lengths capped), all arriving at once,
    each to a function drawn at random (seeded)."""
    trace = read_azure_csv(TRACE).slice(max_requests=args.requests)
    builder = PromptBuilder(load_tokenizer(base), seed=args.seed)
    rng = random.Random(args.seed)
    items = []
    for i, r in enumerate(trace.requests):
        prompt_tokens, output_tokens = min(r.prompt_tokens, args.max_prompt), min(r.output_tokens, args.max_output)
        prompt, counted = builder.build(prompt_tokens, salt=i)
        planned = PlannedRequest(i, 0.0, rng.choice(names), counted, max(1, output_tokens), r.prompt_tokens,
                                 r.output_tokens)
        items.append(WorkItem(planned, prompt, counted))
    return items


def _deploy(client: Any, names: list[str], adapters: list[Path], env: dict[str, str], memory_mb: int) -> None:
    for name, adapter in zip(names, adapters):
        client.create_function(FunctionName=name, Runtime="slfaas-lora", Role="arn:aws:iam::0:role/x",
                               Code={"ZipFile": zip_adapter(adapter)}, Timeout=600, MemorySize=memory_mb,
                               Environment={"Variables": env})
    for name in names:
        client.get_waiter("function_active_v2").wait(FunctionName=name, WaiterConfig={"Delay": 0.5, "MaxAttempts": 1200})


def _invoke(client: Any, name: str, event: dict, give_up_s: float = 300.0) -> dict:
    """A buffered invoke, sent again after a 429 (an FCFS node refuses beyond its instances)."""
    deadline = time.monotonic() + give_up_s
    while True:
        try:
            resp = client.invoke(FunctionName=name, Payload=json.dumps(event))
            break
        except client.exceptions.TooManyRequestsException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    body = json.loads(resp["Payload"].read() or b"null")
    if "FunctionError" in resp:
        raise RuntimeError(f"{name}: {body}")
    return body


def _server_flags(args: argparse.Namespace, mode: str) -> tuple[str, ...]:
    # the shared runtimes of the co-batching mode each hold a large batch: fewer, larger instances
    shared = mode == "cobatched"
    instances = args.shared_instances if shared else args.functions
    flags = ["--device", args.device, "--keep-alive-s", "3600", "--init-timeout-s", "480", "--verify-interval-s", "0",
             "--max-instances", str(instances), "--max-concurrent-invocations", str(4 * args.requests),
             "--max-queue-per-function", str(args.requests), "--max-queue-s", str(args.give_up_s),
             "--ttft-slo-ms", str(args.slo_ms), "--instance-gpu-mb", str(args.instance_gpu_mb),
             "--prewarm-min", "0", "--prewarm-budget-mb", "0",
             "--scheduler", "fcfs" if mode == "unbatched" else "slo", "--shared-batch-size", str(args.shared_batch)]
    if shared:
        flags += ["--shared-runtime-gpu-mb", str(args.shared_gpu_mb)]
    return (*flags, *args.server_arg)


def _env(args: argparse.Namespace, mode: str) -> dict[str, str]:
    env = {"SLFAAS_TTFT_SLO_MS": str(int(args.slo_ms))}
    if mode == "batched":
        env["SLFAAS_MAX_BATCH_SIZE"] = str(args.max_batch)
    if mode == "cobatched":
        env["SLFAAS_SHARED_EXECUTION"] = "1"
    return env


def _billing(url: str, names: list[str], request_ids: set[str]) -> dict:
    """The burst's usage records: batch sizes, and each request's share of its batches' time."""
    rows = [u for n in names for u in api(url, "GET", f"/slfaas/v1/cost/usage?function={n}")["Usage"]
            if u["request_id"] in request_ids]
    sizes = [u["batch_size"] for u in rows]
    shares = [u["compute_device_s"] / u["batch_device_s"] for u in rows if u["batch_device_s"]]
    scaled = [u["batch_size"] * u["compute_device_s"] / u["batch_device_s"] for u in rows if u["batch_device_s"]]
    return {"records": len(rows), "batch_size_counts": {str(k): sizes.count(k) for k in sorted(set(sizes))},
            "batch_size_mean": statistics.mean(sizes) if sizes else None,
            "share_of_batch_median": statistics.median(shares) if shares else None,
            # 1.0 when a request in batches of k is billed 1/k of their time (token shares differ a little)
            "share_times_batch_size_median": statistics.median(scaled) if scaled else None,
            "shares_within_batch": all(0 < s <= 1.0 + 1e-9 for s in shares),
            "cost_usd": sum(float(u["cost_usd"]) for u in rows)}


def run_mode(args: argparse.Namespace, mode: str, adapters: list[Path], items: list[WorkItem], out: Path) -> dict:
    names = [f"fn-{k}" for k in range(args.functions)]
    data_dir = Path(tempfile.mkdtemp(prefix=f"slfaas-batching-{mode}-"))
    server = ServerProcess(data_dir, *_server_flags(args, mode), timeout_s=300)
    res: dict[str, Any] = {"mode": mode, "flags": list(_server_flags(args, mode)), "env": _env(args, mode)}
    try:
        client = lambda_client(server.url, max_pool_connections=max(PROBES, args.functions))
        _deploy(client, names, adapters, _env(args, mode), args.memory_mb)
        t0 = time.monotonic()
        warm = {"prompt": "warm up", "max_tokens": 2, "temperature": 0}
        with ThreadPoolExecutor(args.functions) as pool:   # one warm instance per function (one shared runtime)
            list(pool.map(lambda n: _invoke(client, n, warm), names))
        res["warmup_s"] = time.monotonic() - t0
        say(f"{mode}: {args.functions} functions deployed and warm in {res['warmup_s']:.0f} s")
        sender = RetryingSender(Boto3Sender(server.url, max_in_flight=len(items)), args.give_up_s, args.seed)
        with NodeSampler(server.url, 1.0) as sampler:   # device memory through the burst
            run = run_open_loop(items, sender, speedup=1.0, max_in_flight=len(items))
        summary = summarize(run.records, args.slo_ms)
        res["device_memory"] = _memory_peaks(sampler.samples)
        res["error_samples"] = sorted({(r.error or "")[:600] for r in run.records if r.error_type})[:4]
        met = round((summary.slo_attainment or 0.0) * summary.requests)
        res.update(summary=summary.to_json(), retries_429=sender.retries, wall_s=run.wall_s,
                   goodput_rps=met / summary.makespan_s if summary.makespan_s else 0.0,
                   met_slo=met)
        time.sleep(1.0)   # streamed invocations are recorded as their streams close
        res["billing"] = _billing(server.url, names, {r.request_id for r in run.records if r.request_id})
        probe = {"max_tokens": 16, "temperature": 0, "return_tokens": True, "ignore_eos": True}
        with ThreadPoolExecutor(PROBES) as pool:   # the same requests in every mode, concurrently
            got = list(pool.map(lambda k: _invoke(client, names[k % len(names)],
                                                  {**probe, "prompt": items[k].prompt}), range(PROBES)))
        res["probe_tokens"] = [g["tokens"] for g in got]
        res["instances"] = len(api(server.url, "GET", "/slfaas/v1/node")["Instances"])
        say(f"{mode}: goodput {res['goodput_rps']:.2f} req/s, SLO attainment {summary.slo_attainment:.1%}, "
            f"{summary.output_tokens_per_s:.0f} tokens/s, TTFT p50 {summary.ttft_ms.p50 or 0:.0f} ms, "
            f"errors {dict(summary.errors_by_type)}, 429 retries {sender.retries}, "
            f"batch sizes {res['billing']['batch_size_counts']}")
    finally:
        server.close()
        (out / f"server-{mode}.log").write_text("".join(server.lines[-800:]))
        _keep_function_logs(data_dir / "logs", out / f"logs-{mode}")
    return res


def _keep_function_logs(logs: Path, into: Path, lines: int = 400) -> None:
    """The last lines of every function's log (the runtimes' own: out-of-memory retries,
    batch sizes), one file each, for a run that went wrong."""
    for path in sorted(p for p in logs.rglob("*") if p.is_file()) if logs.is_dir() else []:
        into.mkdir(parents=True, exist_ok=True)
        tail = path.read_text(errors="replace").splitlines()[-lines:]
        (into / "_".join(path.relative_to(logs).parts)).write_text("\n".join(tail) + "\n")


def _memory_peaks(samples: list) -> dict[str, Any]:
    """The peaks of what the node measured on the device: all of it in use, and what its
    instances held (how close the burst came to the device's capacity, and who held it)."""
    used = [x.device_used_mb for x in samples if x.device_used_mb is not None]
    held = [x.instances_device_mb for x in samples if x.instances_device_mb is not None]
    total = next((x.device_total_mb for x in samples if x.device_total_mb is not None), None)
    return {"samples": len(samples), "device_total_mb": total, "device_used_mb_max": max(used, default=None),
            "instances_held_mb_max": max(held, default=None)}


def _table(results: dict) -> str:
    head = f"{'mode':<10} {'goodput/s':>9} {'SLO met':>8} {'tokens/s':>9} {'TTFT p50':>9} {'TTFT p99':>9} " \
           f"{'errors':>6} {'429s':>5} {'batch':>6} {'share·k':>7}"
    lines = [head, "-" * len(head)]
    for mode in MODES:
        r = results.get(mode)
        if not r:
            continue
        s, b = r["summary"], r["billing"]
        lines.append(f"{mode:<10} {r['goodput_rps']:>9.2f} {s['slo_attainment']:>8.1%} {s['output_tokens_per_s']:>9.0f} "
                     f"{s['ttft_ms']['p50'] or 0:>9.0f} {s['ttft_ms']['p99'] or 0:>9.0f} {s['errors']:>6} "
                     f"{r['retries_429']:>5} {b['batch_size_mean'] or 0:>6.2f} {b['share_times_batch_size_median'] or 0:>7.2f}")
    return "\n".join(lines)


# what makes two runs' modes comparable: the same burst on the same node
WORKLOAD_KEYS = ("device", "tiny", "functions", "requests", "slo_ms", "max_prompt", "max_output", "memory_mb", "seed",
                 "max_batch", "shared_batch")


def _earlier_modes(path: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Modes an earlier run wrote into this --out for the same burst: a run of 256 requests does
    not fit one 10-minute command, so each mode can run in its own and the table covers all."""
    try:
        earlier = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    theirs = earlier.get("args") or {}
    if any(theirs.get(k) != getattr(args, k) for k in WORKLOAD_KEYS):
        say(f"{path} holds a different burst: its modes are replaced, not combined")
        return {}
    kept = {m: earlier[m] for m in MODES if m in earlier}
    if kept:
        say(f"combining with the modes already in {path}: {', '.join(kept)}")
    return kept


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.environ.get("OUT", "bench-out"))
    ap.add_argument("--work", default=None, help="where the checkpoint and adapters are made (kept between runs)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="tiny random model, small burst: a smoke test on CPU")
    ap.add_argument("--functions", type=int, default=None)
    ap.add_argument("--requests", type=int, default=None)
    ap.add_argument("--slo-ms", type=float, default=1000.0)
    ap.add_argument("--max-batch", type=int, default=8, help="SLFAAS_MAX_BATCH_SIZE of the batched mode")
    ap.add_argument("--shared-batch", type=int, default=64, help="the shared runtime's batch (cobatched mode)")
    ap.add_argument("--max-prompt", type=int, default=None)
    ap.add_argument("--max-output", type=int, default=None)
    ap.add_argument("--memory-mb", type=int, default=None, help="MemorySize of the functions")
    ap.add_argument("--instance-gpu-mb", type=int, default=None,
                    help="the node's --instance-gpu-mb: what each instance's batches may hold beside the backbone "
                         "(default: a 16th of an H200 less the backbone, 6144; tiny: 1536)")
    ap.add_argument("--shared-instances", type=int, default=4, help="the co-batching mode's --max-instances")
    ap.add_argument("--shared-gpu-mb", type=int, default=None,
                    help="the co-batching mode's --shared-runtime-gpu-mb (default: 28672, a quarter of an H200 "
                         "less the backbone; tiny: 1536)")
    ap.add_argument("--give-up-s", type=float, default=300.0, help="the client stops retrying 429s after this")
    ap.add_argument("--modes", default=",".join(DEFAULT_MODES), help=f"of {', '.join(MODES)}")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--server-arg", action="append", default=[], help="one more server flag (repeatable)")
    args = ap.parse_args()
    small = {"functions": 4, "requests": 24, "max_prompt": 48, "max_output": 8, "memory_mb": 2048, "instance_gpu_mb": 1536,
             "shared_gpu_mb": 1536}
    large = {"functions": 16, "requests": 256, "max_prompt": 1024, "max_output": 128, "memory_mb": 8192,
             "instance_gpu_mb": 6144, "shared_gpu_mb": 28672}
    for key, value in (small if args.tiny else large).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work or ("/tmp/slfaas-batching-tiny" if args.tiny else "/tmp/slfaas-gpu-bench"))
    work.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"args": vars(args)}
    results.update(_earlier_modes(out / "results.json", args))
    base, adapters = _assets(args, work)
    items = _workload(args, base, [f"fn-{k}" for k in range(args.functions)])
    results["workload"] = {"requests": len(items), "prompt_tokens_mean": statistics.mean(i.prompt_tokens for i in items),
                           "output_tokens_mean": statistics.mean(i.request.output_tokens for i in items)}
    say(f"{len(items)} requests over {args.functions} functions, prompts {results['workload']['prompt_tokens_mean']:.0f} "
        f"tokens and outputs {results['workload']['output_tokens_mean']:.0f} tokens on average")
    for mode in [m for m in args.modes.split(",") if m in MODES]:
        results[mode] = run_mode(args, mode, adapters, items, out)
        (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    done = [m for m in MODES if m in results]
    if "unbatched" in results:
        base_run = results["unbatched"]
        for mode in done:
            r = results[mode]
            r["goodput_vs_unbatched"] = r["goodput_rps"] / base_run["goodput_rps"] if base_run["goodput_rps"] else None
            r["probe_outputs_equal_unbatched"] = sum(a == b for a, b in zip(r["probe_tokens"], base_run["probe_tokens"]))
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    print(_table(results))
    for mode in done:
        r = results[mode]
        if r.get("goodput_vs_unbatched") is not None:
            print(f"{mode}: goodput {r['goodput_vs_unbatched']:.2f}× unbatched; probe outputs equal to unbatched: "
                  f"{r['probe_outputs_equal_unbatched']}/{PROBES}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
