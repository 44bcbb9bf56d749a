"""Several GPUs behind one endpoint (``--devices cuda:0,cuda:1``) against one GPU.

One command on a 2-GPU machine (random-weight Llama-2-7B shape, fp16; no downloads):

    python bench/multi_gpu.py [--devices cuda:0,cuda:1] [--functions 32] [--out DIR]

On CPU, as a smoke test with the tiny test model:

    python bench/multi_gpu.py --device cpu --tiny

It starts two servers side by side: ``--device D0`` (one node) and ``--devices D0,D1,...`` (a
node per device), deploys the same N functions of one backbone on both, cold-starts them
(the multi-device server spreads them over its nodes), then measures:

- warm TTFT per device: one request at a time, the servers' functions interleaved at sample
  granularity (so host noise hits both alike); medians per device of the multi-device server
  next to the one-device server's median, and their ratio;
- burst throughput: every function at once, each running ``--burst-requests`` requests one
  after another, one server at a time, alternating for ``--burst-rounds`` rounds; completion
  tokens per second, medians, and the multi/one ratio.

Also recorded: where the instances landed (per node) and each node's backbones (one copy
per device). Prints a table and writes multi_gpu.json under --out.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from slfaas.client import api, lambda_client, zip_adapter
from slfaas.testing.serverproc import ServerProcess

T0 = time.time()


def say(msg: str) -> None:
    print(f"[{time.time() - T0:7.1f}s] {msg}", flush=True)


def make_assets(root: Path, tiny: bool, n: int) -> tuple[Path, list[Path], str]:
    """(base model, n adapters, a prompt): the tiny test model, or a random 7B-shaped one."""
    if tiny:
        from slfaas.testing.tinymodels import make_adapter, make_base_model

        base = make_base_model(root / "base")
        adapters = [make_adapter(base, root / f"adapter-{k}", seed=100 + k, base_model_name=str(base))
                    for k in range(n)]
        return base, adapters, "the quick brown fox " * 8
    from gpu_assets import make_adapters, make_checkpoint, make_prompt   # bench/gpu_assets.py, beside this file

    base = make_checkpoint(root)
    return base, make_adapters(root, base, n), make_prompt(base)


class Target:
    """One server and its deployed functions."""

    def __init__(self, label: str, server: ServerProcess):
        self.label = label
        self.server = server
        self.client = lambda_client(server.url)
        self.names: list[str] = []

    def deploy(self, adapters: list[Path]) -> None:
        for k, adapter in enumerate(adapters):
            name = f"mg-{k}"
            self.client.create_function(FunctionName=name, Runtime="slfaas-lora", Role="arn:aws:iam::0:role/x",
                                        Code={"ZipFile": zip_adapter(adapter)}, Timeout=600, MemorySize=4096)
            self.names.append(name)
        for name in self.names:
            self.client.get_waiter("function_active_v2").wait(FunctionName=name,
                                                               WaiterConfig={"Delay": 1, "MaxAttempts": 900})

    def wait_for_tiers(self, timeout_s: float = 300.0) -> None:
        """Until every node's host tier holds every deployed adapter (the preloader fills them a
        moment after deployment, node by node): a cold burst placed earlier would prefer the
        node that happened to be first, not spread by load."""
        deadline = time.monotonic() + timeout_s
        while True:
            report = api(self.server.url, "GET", "/slfaas/v1/node")
            tiers = [[t for t in n.get("Tiers") or [] if t["tier"] == "host" and t["budget_bytes"] > 0]
                     for n in report.get("Nodes") or [report]]
            if not all(tiers):
                return   # a node without a host tier: nothing to wait for
            held = [max(len(t["adapters"]) for t in ts) for ts in tiers]
            if min(held) >= len(self.names):
                return
            if time.monotonic() > deadline:
                say(f"{self.label}: host tiers hold {held} of {len(self.names)} adapters after {timeout_s:.0f} s; "
                    "going on (placement may then prefer the fuller node)")
                return
            time.sleep(0.5)

    def invoke(self, name: str, payload: bytes) -> dict:
        r = self.client.invoke(FunctionName=name, Payload=payload)
        body = json.loads(r["Payload"].read())
        if r.get("FunctionError"):
            raise RuntimeError(f"{self.label} {name}: {body}")
        return body

    def device_of(self) -> dict[str, str]:
        """Function → the node its (first) instance runs on, as ``device#index`` (two CPU nodes
        have the same device)."""
        report = api(self.server.url, "GET", "/slfaas/v1/node")
        labels = {n["NodeId"]: f"{n['Device']}#{k}" for k, n in enumerate(report["Nodes"])}
        out: dict[str, str] = {}
        for i in report["Instances"]:
            out.setdefault(i["function_name"], labels.get(i["node_id"], report["Device"]))
        return out

    def burst(self, payload: bytes, per_function: int) -> tuple[float, int]:
        """(wall seconds, completion tokens) of every function at once, each running
        ``per_function`` requests one after another (one instance per function stays busy)."""
        def run(name: str) -> int:
            return sum(self.invoke(name, payload)["usage"]["completion_tokens"] for _ in range(per_function))
        t0 = time.perf_counter()
        with ThreadPoolExecutor(len(self.names)) as pool:
            tokens = sum(pool.map(run, self.names))
        return time.perf_counter() - t0, tokens


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", default="cuda:0,cuda:1", help="the multi-device server's devices")
    ap.add_argument("--device", help="the device kind: cpu runs the smoke test on CPU nodes (cpu,cpu)")
    ap.add_argument("--tiny", action="store_true", help="the tiny test model instead of a 7B shape")
    ap.add_argument("--functions", type=int, help="functions of the one backbone (default 32; 4 with --tiny)")
    ap.add_argument("--samples", type=int, help="warm TTFT samples per function (default 20; 3 with --tiny)")
    ap.add_argument("--burst-requests", type=int, default=4, help="requests per function in a burst, in turn")
    ap.add_argument("--burst-rounds", type=int, help="bursts per server, alternating (default 3; 1 with --tiny)")
    ap.add_argument("--max-tokens", type=int, help="tokens per burst request (default 64; 8 with --tiny)")
    ap.add_argument("--server-arg", action="append", default=[], help="extra `slfaas server` argument (repeat)")
    ap.add_argument("--out", default=None, help="where multi_gpu.json goes (default: a temporary dir)")
    args = ap.parse_args()
    tiny = args.tiny
    devices = ["cpu", "cpu"] if args.device == "cpu" else args.devices.split(",")
    functions = args.functions or (4 if tiny else 32)
    samples = args.samples or (3 if tiny else 20)
    rounds = args.burst_rounds or (1 if tiny else 3)
    max_tokens = args.max_tokens or (8 if tiny else 64)
    out = Path(args.out or tempfile.mkdtemp(prefix="slfaas-multi-gpu-"))
    out.mkdir(parents=True, exist_ok=True)
    results: dict = {"devices": devices, "functions": functions, "tiny": tiny, "samples_per_function": samples,
                     "burst": {"requests_per_function": args.burst_requests, "rounds": rounds,
                               "max_tokens": max_tokens}}

    say(f"making the model and {functions} adapters ...")
    base, adapters, prompt = make_assets(out / "assets", tiny, functions)
    common = ["--keep-alive-s", "3600", "--max-instances", str(max(functions, 2)), "--init-timeout-s", "900",
              "--verify-interval-s", "0", *args.server_arg]
    for label in ("one", "multi"):   # servers start empty (the model and adapters are kept)
        shutil.rmtree(out / label, ignore_errors=True)
    targets: list[Target] = []
    try:
        one = Target("one", ServerProcess(out / "one", "--device", devices[0], *common, timeout_s=600))
        targets.append(one)
        multi = Target("multi", ServerProcess(out / "multi", "--devices", ",".join(devices), *common, timeout_s=600))
        targets.append(multi)
        for t in targets:
            say(f"{t.label}: deploying {functions} functions ...")
            t.deploy(adapters)
            t.wait_for_tiers()
            cold = json.dumps({"prompt": prompt, "max_tokens": 1, "temperature": 0}).encode()
            t0 = time.perf_counter()
            with ThreadPoolExecutor(functions) as pool:
                list(pool.map(lambda n, t=t: t.invoke(n, cold), t.names))
            results.setdefault("cold_start_wall_s", {})[t.label] = time.perf_counter() - t0
        placement = multi.device_of()
        per_device = {d: sorted(n for n, dev in placement.items() if dev == d) for d in sorted(set(placement.values()))}
        nodes = api(multi.server.url, "GET", "/slfaas/v1/node")["Nodes"]
        results["placement"] = {d: len(ns) for d, ns in per_device.items()}
        results["backbones_per_node"] = {n["Device"] + "/" + n["NodeId"]: len(n["Backbones"]) for n in nodes}
        say(f"instances per device: {results['placement']}; backbones per node: {results['backbones_per_node']}")

        say("warm TTFT, interleaved ...")
        event_1 = json.dumps({"prompt": prompt, "max_tokens": 1, "temperature": 0}).encode()
        ttft: dict[str, list[float]] = {"one": []}
        for _ in range(samples):
            for name in one.names:
                ttft["one"].append(one.invoke(name, event_1)["metrics"]["ttft_ms"])
                ttft.setdefault(placement[name], []).append(multi.invoke(name, event_1)["metrics"]["ttft_ms"])
        med = statistics.median
        single = med(ttft["one"])
        results["warm_ttft_ms"] = {"one_device": single,
                                   **{f"multi {d}": med(v) for d, v in ttft.items() if d != "one"}}
        results["warm_ttft_ratio_vs_one"] = {d: med(v) / single for d, v in ttft.items() if d != "one"}
        say(f"warm TTFT medians (ms): {results['warm_ttft_ms']}")

        say("burst throughput, alternating servers ...")
        burst = json.dumps({"prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
                            "ignore_eos": True}).encode()
        tps: dict[str, list[float]] = {"one": [], "multi": []}
        for _ in range(rounds):
            for t in (one, multi):
                wall_s, tokens = t.burst(burst, args.burst_requests)
                tps[t.label].append(tokens / wall_s)
        results["burst_tokens_per_s"] = {k: med(v) for k, v in tps.items()}
        results["burst_samples_tokens_per_s"] = tps
        results["burst_ratio_multi_vs_one"] = med(tps["multi"]) / med(tps["one"])
        say(f"burst tokens/s: {results['burst_tokens_per_s']} (x{results['burst_ratio_multi_vs_one']:.2f})")
    finally:
        for t in targets:
            t.server.stop()
        (out / "multi_gpu.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    print(f"wrote {out / 'multi_gpu.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
