"""Keep-alive policies compared on one Zipf-skewed replay over 32 tiny functions (CPU).

One workload (the replay harness: Zipf popularity over N functions, bursty synthetic Gamma
arrivals with lengths from the bundled Azure trace, or per-function periodic arrivals), built
once and replayed against a fresh `slfaas server` per policy: a fixed TTL, and the hybrid
histogram policy with the same TTL as its fallback. Reported per policy: cold starts (the
server's invocation records), and idle device-seconds from the node's billing meter over the
replay (start to last arrival + TTL): keep-alive overhead (device time when nothing ran and
instances were held idle) and idle instance-seconds (each held instance's whole idle time:
the device memory keep-alive held), pre-warms, evictions and TTFT.

    python bench/keepalive_replay.py [--arrivals gamma:1:2] [--duration 300] [--ttl 30] [--bin 1]
                                     [--max-instances 16] [--json results.json]
"""
import argparse
import json
import random
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

from slfaas.bench import ReplayOptions, WorkloadSpec, build_workload, deploy_functions, replay
from slfaas.bench.workload import Popularity
from slfaas.client import api
from slfaas.testing.serverproc import ServerProcess

ROOT = Path(__file__).resolve().parents[1]
TRACE = ROOT / "bench" / "data" / "AzureLLMInferenceTrace_conv.csv"


def assets(root: Path, n_adapters: int) -> tuple[Path, list[Path]]:
    from slfaas.testing.tinymodels import make_adapter, make_base_model

    base = root / "base-tiny"
    if not (base / "config.json").is_file():
        make_base_model(base)
    adapters = []
    for k in range(n_adapters):
        out = root / f"adapter-{k}"
        if not (out / "adapter_model.safetensors").is_file():
            make_adapter(base, out, seed=300 + k, base_model_name=str(base))
        adapters.append(out)
    return base, adapters


def periodic_arrivals(rate_per_s: float, jitter: float, duration_s: float, functions: tuple[str, ...],
                      popularity: str, seed: int) -> list[tuple[float, str]]:
    """Function i fires every 1 / (rate × weight_i) s (Zipf weights), each period stretched
    by a uniform ±``jitter`` share, from a random phase: timer-like functions."""
    rng = random.Random(seed)
    out = []
    for name, weight in zip(functions, Popularity.parse(popularity).weights(len(functions))):
        period = 1.0 / (rate_per_s * weight)
        t = rng.uniform(0, period)
        while t < duration_s:
            out.append((t, name))
            t += period * (1 + rng.uniform(-jitter, jitter))
    return sorted(out)


def workload_for(args: argparse.Namespace, base: Path):  # type: ignore[no-untyped-def]
    kind, *params = args.arrivals.split(":")
    common = dict(n_functions=args.functions, popularity=args.popularity, model_dir=base,
                  max_prompt_tokens=args.max_prompt_tokens, max_output_tokens=args.max_output_tokens,
                  function_prefix="ka", seed=args.seed)
    if kind != "periodic":
        return build_workload(WorkloadSpec(TRACE, synthetic=args.arrivals, duration_s=args.duration, **common))
    rate, jitter = float(params[0]), float(params[1])
    names = tuple(f"ka-{i}" for i in range(args.functions))
    plan = periodic_arrivals(rate, jitter, args.duration, names, args.popularity, args.seed)
    # the harness builds prompts for that many trace rows; arrivals and functions are then ours
    wl = build_workload(WorkloadSpec(TRACE, max_requests=len(plan), **common))
    items = tuple(replace(it, request=replace(it.request, arrival_s=t, function=fn))
                  for it, (t, fn) in zip(wl.items, plan))
    return replace(wl, items=items, source=f"{args.arrivals} (lengths from the trace)")


def by_function(workload) -> dict[str, list[float]]:  # type: ignore[no-untyped-def]
    out: dict[str, list[float]] = defaultdict(list)
    for it in workload.items:
        out[it.request.function].append(it.request.arrival_s)
    return out


def policies(args: argparse.Namespace) -> dict[str, list[str]]:
    ttl = str(args.ttl)
    return {"fixed": ["--keep-alive-policy", "fixed", "--keep-alive-s", ttl],
            "histogram": ["--keep-alive-policy", "histogram", "--keep-alive-s", ttl, "--keep-alive-bin-s",
                          str(args.bin)]}


# ---- one live run -----------------------------------------------------------------------------

def node_usage(url: str) -> dict:
    nodes = api(url, "GET", "/slfaas/v1/cost/nodes")["Nodes"]
    return max(nodes, key=lambda n: n["end_ts"])   # this server's live session


def _delta(after: dict, before: dict) -> dict:
    def total(d: dict, key: str) -> float:
        return sum(d.get(key, {}).values())
    return {
        "elapsed_s": after["elapsed_s"] - before["elapsed_s"],
        "billed_device_s": after["billed_device_s"] - before["billed_device_s"],
        "keep_alive_overhead_s": after["overhead_s"].get("keep_alive", 0) - before["overhead_s"].get("keep_alive", 0),
        "preload_overhead_s": after["overhead_s"].get("preload", 0) - before["overhead_s"].get("preload", 0),
        "idle_instance_s": total(after, "idle_instance_by_function_s") - total(before, "idle_instance_by_function_s"),
        "idle_instance_by_function_s": {
            fn: round(s - before.get("idle_instance_by_function_s", {}).get(fn, 0.0), 3)
            for fn, s in sorted(after.get("idle_instance_by_function_s", {}).items())},
    }


def run_live(name: str, flags: list[str], workload, adapters: list[Path], args: argparse.Namespace,
             log=print) -> dict:  # type: ignore[no-untyped-def]
    span = workload.items[-1].request.arrival_s
    with tempfile.TemporaryDirectory(prefix=f"slfaas-ka-{name}-") as tmp:
        server = ServerProcess(Path(tmp), *flags, "--max-instances", str(args.max_instances),
                               "--warm-pool", str(args.warm_pool), "--log-level", "info")
        try:
            log(f"[{name}] server {server.url}: deploying {len(workload.functions)} functions")
            deploy_functions(server.url, workload.functions, adapters, memory_mb=1024, timeout_s=120)
            before = node_usage(server.url)
            started = time.monotonic()
            log(f"[{name}] replaying {len(workload.items)} requests over {span:.0f} s")
            result = replay(workload, ReplayOptions(server.url, slo_ms=args.slo_ms, max_in_flight=64))
            # idle time after the last arrival counts too, up to the TTL (the fixed policy's tail)
            time.sleep(max(0.0, started + span + args.ttl - time.monotonic()))
            after = node_usage(server.url)
            s = result.summary
            result.write(Path(args.records_dir) / name) if args.records_dir else None
            return {"policy": name, "flags": flags, "requests": len(result.records), "errors": s.errors,
                    "errors_by_type": dict(s.errors_by_type),
                    "cold_starts": s.cold_starts, "ttft_ms_p50": s.ttft_ms.p50, "ttft_ms_p99": s.ttft_ms.p99,
                    "prewarms": server.count(r"keep-alive: pre-warming"),
                    "evictions": server.count(r"evicting idle instance"),
                    "keep_alive_stops": server.count(r"keep-alive: stopping idle instance"),
                    **_delta(after, before)}
        finally:
            server.stop()


def table(rows: list[dict]) -> str:
    cols = [("policy", "{}"), ("requests", "{}"), ("errors", "{}"), ("cold_starts", "{}"),
            ("idle_instance_s", "{:.0f}"), ("keep_alive_overhead_s", "{:.1f}"), ("preload_overhead_s", "{:.1f}"),
            ("prewarms", "{}"), ("evictions", "{}"), ("ttft_ms_p50", "{:.0f}"), ("ttft_ms_p99", "{:.0f}")]
    cells = [[c for c, _ in cols]] + [[f.format(r[c]) if r.get(c) is not None else "-" for c, f in cols]
                                       for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    return "\n".join("  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in cells)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arrivals", default="gamma:1:2",
                   help="gamma:RATE:CV or poisson:RATE (the harness's --synthetic), or periodic:RATE:JITTER")
    p.add_argument("--duration", type=float, default=300.0, help="seconds of arrivals")
    p.add_argument("--functions", type=int, default=32)
    p.add_argument("--popularity", default="zipf:1.0")
    p.add_argument("--ttl", type=float, default=30.0, help="fixed TTL, and the histogram policy's fallback")
    p.add_argument("--bin", type=float, default=1.0, help="histogram bin width, seconds")
    p.add_argument("--max-instances", type=int, default=16)
    p.add_argument("--warm-pool", type=int, default=4, help="generic runtimes pre-started (cheaper cold starts)")
    p.add_argument("--max-prompt-tokens", type=int, default=32)
    p.add_argument("--max-output-tokens", type=int, default=4)
    p.add_argument("--slo-ms", type=float, default=1000.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--assets", default=str(Path(tempfile.gettempdir()) / "slfaas-ka-assets"))
    p.add_argument("--json", help="write everything here")
    p.add_argument("--records-dir", help="also write each policy's requests.jsonl and summary.json here")
    args = p.parse_args()

    base, adapters = assets(Path(args.assets), 4)
    workload = workload_for(args, base)
    arrivals = by_function(workload)
    span = workload.items[-1].request.arrival_s
    print(f"workload: {len(workload.items)} requests to {len(arrivals)} functions over {span:.0f} s "
          f"({workload.source}); fixed TTL {args.ttl:g} s vs histogram (bin {args.bin:g} s, fallback "
          f"{args.ttl:g} s), --max-instances {args.max_instances}, --warm-pool {args.warm_pool}")
    rows = [run_live(name, flags, workload, adapters, args) for name, flags in policies(args).items()]
    print(table(rows))
    fixed, hist = rows
    print(f"histogram / fixed: cold starts {hist['cold_starts']}/{fixed['cold_starts']}, idle instance-s "
          f"{hist['idle_instance_s'] / max(fixed['idle_instance_s'], 1e-9):.2f}x, keep-alive overhead "
          f"{hist['keep_alive_overhead_s'] / max(fixed['keep_alive_overhead_s'], 1e-9):.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "workload": workload.describe(),
                                               "live": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
