"""GPU smoke-and-measure: one backbone in GPU memory, borrowed by N functions (CUDA VMM, read-only).

One command on the GPU machine (random-weight Llama-2-7B shape, fp16; no downloads):

    python bench/gpu_node.py [--out DIR] [--functions 16] [--scale-to 40] [--phases tests,ref,node,scale,integrity]

Phases: ``tests`` runs the CUDA pytest suite; ``ref`` measures in-process PEFT prefill and
greedy outputs in a separate process; ``node`` starts a real `slfaas server --device cuda`,
deploys N adapters through boto3, cold-starts them concurrently, and measures backbone load
GB/s, warm TTFT and GPU memory; ``scale`` adds functions up to --scale-to instances;
``integrity`` tampers with the arena from a function and checks detection and recovery.
Prints a table and writes results.json under --out.
"""
from __future__ import annotations

import argparse
import json
from decimal import Decimal
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from slfaas.testing.serverproc import ServerProcess

from gpu_assets import (GEN_TOKENS, LOAD_PROBE, REF_SCRIPT, ROOT, gpu_used_mib, make_adapters, make_checkpoint,
                        make_prompt, say)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.environ.get("OUT", "bench-out"))
    ap.add_argument("--work", default="/tmp/slfaas-gpu-bench")
    ap.add_argument("--functions", type=int, default=16)
    ap.add_argument("--scale-to", type=int, default=40)
    ap.add_argument("--phases", default="tests,probe,ref,node,scale,integrity",
                    help="comma list of tests,probe,ref,node,scale,integrity,pool")
    ap.add_argument("--pool-size", type=int, default=4, help="pool phase: warm-pool runtimes and functions")
    ap.add_argument("--server-args", default="", help="extra `slfaas server` arguments, e.g. --insecure-sandbox")
    args = ap.parse_args()
    phases = set(args.phases.split(","))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work)
    results: dict = {"phases": sorted(phases)}

    def save() -> None:
        (out / "results.json").write_text(json.dumps(results, indent=1, default=str))

    import torch
    results["gpu"] = torch.cuda.get_device_name(0)
    results["torch"] = torch.__version__
    baseline = gpu_used_mib()  # before the reference process and the server exist
    say(f"GPU {results['gpu']}, torch {torch.__version__}, baseline used {baseline} MiB")

    if "tests" in phases:
        say("running the CUDA test suite (tests/gpu_node/test_cuda_node.py) ...")
        r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                            "tests/gpu_node/test_cuda_node.py"], cwd=ROOT, capture_output=True, text=True)
        (out / "cuda_tests.log").write_text(r.stdout + r.stderr)
        results["cuda_tests"] = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else r.stderr[-500:]
        say(f"CUDA tests: {results['cuda_tests']}")
        save()
        if r.returncode != 0:
            print(r.stdout[-6000:], r.stderr[-3000:])
            return 1
    if not phases & {"ref", "node", "scale", "integrity"}:
        return 0

    say("making a random Llama-2-7B-shape fp16 checkpoint ...")
    base = make_checkpoint(work)
    n_adapters = max(args.functions, args.scale_to if "scale" in phases else 0)
    adapters = make_adapters(work, base, n_adapters)
    prompt = make_prompt(base)
    (work / "prompt.txt").write_text(prompt)
    size_gb = (base / "model.safetensors").stat().st_size / 1e9
    results["backbone_gb"] = size_gb
    say(f"checkpoint {size_gb:.2f} GB, {n_adapters} adapters")

    if "probe" in phases:
        for threads in (8, 16):
            r = subprocess.run([sys.executable, "-c", LOAD_PROBE, str(base / "model.safetensors"), str(threads)],
                               capture_output=True, text=True)
            rd, cp = (float(x) for x in r.stdout.split()) if r.returncode == 0 else (0.0, 0.0)
            results.setdefault("load_probe", {})[threads] = {"read_to_pinned_gb_s": rd, "pinned_h2d_gb_s": cp}
            say(f"load probe, {threads} threads: page cache -> pinned {rd:.1f} GB/s; pinned -> GPU {cp:.1f} GB/s")

    ref_proc = None
    if "ref" in phases:
        say("in-process reference (PEFT generate; prefill timed later, side by side) in a separate process ...")
        ref_proc = subprocess.Popen([sys.executable, "-c", REF_SCRIPT, str(base), str(work / "prompt.txt"),
                                     str(adapters[0]), str(adapters[1])],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = ref_proc.stdout.readline()
        if not line:
            print("reference process failed")
            return 1
        results["ref"] = json.loads(line)
        say(f"reference: load {results['ref']['load_s']:.1f} s ({size_gb / results['ref']['load_s']:.1f} GB/s "
            f"via transformers), attention {results['ref']['attention']}")
        save()

    def ref_prefill(k: int, n: int, mode: str = "measure") -> list[float]:
        ref_proc.stdin.write(f"{mode} {k} {n}\n")
        ref_proc.stdin.flush()
        return json.loads(ref_proc.stdout.readline())

    if not phases & {"node", "scale", "integrity"}:
        return 0
    from slfaas.client import api, lambda_client, zip_adapter

    data = Path(tempfile.mkdtemp(prefix="slfaas-gpu-"))
    texts: dict[str, list[int]] = {}   # greedy token ids per function (node phase)
    server = ServerProcess(data, "--device", "cuda", "--keep-alive-s", "3600", "--max-instances", "64",
                           "--init-timeout-s", "480", "--verify-interval-s", "0", *args.server_args.split())
    results["server_args"] = args.server_args
    results["arena"] = os.environ.get("SLFAAS_ARENA", "vmm")
    try:
        client = lambda_client(server.url)
        event_gen = json.dumps({"prompt": prompt, "max_tokens": GEN_TOKENS, "temperature": 0,
                                "return_tokens": True}).encode()

        def create(k: int) -> str:
            name = f"fn-{k}"
            client.create_function(FunctionName=name, Runtime="slfaas-lora", Role="arn:aws:iam::0:role/x",
                                   Code={"ZipFile": zip_adapter(adapters[k])}, Timeout=600)
            return name

        def wait_active(name: str) -> None:
            client.get_waiter("function_active_v2").wait(FunctionName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 600})

        def invoke(name: str, payload: bytes) -> tuple[dict, float]:
            t0 = time.perf_counter()
            r = client.invoke(FunctionName=name, Payload=payload)
            body = json.loads(r["Payload"].read())
            if r.get("FunctionError"):
                raise RuntimeError(f"{name}: {body}")
            return body, (time.perf_counter() - t0) * 1000

        say(f"deploying {args.functions} functions (the first loads the backbone) ...")
        names = [create(k) for k in range(args.functions)]
        for n in names:
            wait_active(n)
        node = api(server.url, "GET", "/slfaas/v1/node")
        bb = node["Backbones"][0]
        results["backbone_load"] = {"s": bb["load_s"], "gb_per_s": bb["load_gb_per_s"], "size_bytes": bb["size_bytes"]}
        say(f"backbone loaded once: {bb['size_bytes'] / 1e9:.2f} GB in {bb['load_s']:.2f} s = {bb['load_gb_per_s']:.1f} GB/s")
        save()

        say(f"cold-starting {len(names)} instances concurrently ...")
        t0 = time.perf_counter()
        with ThreadPoolExecutor(len(names)) as pool:
            cold = list(pool.map(lambda n: invoke(n, event_gen), names))
        results["cold_start_wall_s"] = time.perf_counter() - t0
        results["cold_client_ms_median"] = statistics.median(ms for _, ms in cold)
        say(f"all {len(names)} warm after {results['cold_start_wall_s']:.1f} s "
            f"(median cold invoke {results['cold_client_ms_median'] / 1000:.1f} s)")
        texts = {names[k]: cold[k][0]["tokens"] for k in range(len(names))}
        if "ref" in results:
            ref_tokens = [v["tokens"] for v in results["ref"]["adapters"].values()]
            results["greedy_equal"] = [texts[names[0]] == ref_tokens[0], texts[names[1]] == ref_tokens[1]]
            results["adapters_differ"] = texts[names[0]] != texts[names[1]]
            say(f"greedy equal to in-process PEFT: {results['greedy_equal']}, adapters differ: {results['adapters_differ']}")

        # warm TTFT: the function's own prefill+first token, and the client's time for 1 token
        event_1 = json.dumps({"prompt": prompt, "max_tokens": 1, "temperature": 0}).encode()
        t_end = time.time() + 3
        while time.time() < t_end:  # steady GPU clocks before timing anything
            invoke(names[0], event_1)
            if ref_proc:
                ref_prefill(0, 2)
        # side by side at sample granularity: the host's noise (launch-bound prefill, seen to
        # swing 35-64 ms between bursts) then hits reference and function alike
        samples: dict[str, dict[str, list[float]]] = {}
        for _ in range(40):
            for k, name in enumerate(names[:2]):
                d = samples.setdefault(name, {"ref_prefill": [], "ref_ttft": [], "ttft": [], "prefill": [],
                                              "client": []})
                if ref_proc:
                    d["ref_prefill"] += ref_prefill(k, 2)
                    d["ref_ttft"] += ref_prefill(k, 1, "ttft")
                for _ in range(2):
                    body, ms = invoke(name, event_1)
                    d["ttft"].append(body["metrics"]["ttft_ms"])
                    d["prefill"].append(body["metrics"]["prefill_ms"])
                    d["client"].append(ms)
        results["ttft_samples"] = samples
        med = statistics.median
        for name, d in samples.items():
            w = {"n": len(d["ttft"]), "ttft_ms_median": med(d["ttft"]), "prefill_ms_median": med(d["prefill"]),
                 "client_ms_median": med(d["client"]), "prompt_tokens": 512}
            if ref_proc:
                w["ref_prefill_ms_median"] = med(d["ref_prefill"])
                w["ref_ttft_ms_median"] = med(d["ref_ttft"])
                w["ratio_vs_inprocess_prefill"] = w["ttft_ms_median"] / w["ref_prefill_ms_median"]
                w["ratio_vs_inprocess_ttft"] = w["ttft_ms_median"] / w["ref_ttft_ms_median"]
            results.setdefault("warm", {})[name] = w
        say("warm TTFT: " + json.dumps(results["warm"]))
        if ref_proc:
            ref_proc.stdin.close()
            ref_proc.wait(60)
            ref_proc = None

        # after idling, the first request re-allocates its scratch (instances trim when idle)
        time.sleep(2.5)
        after_idle = [invoke(names[k % len(names)], event_1)[0]["metrics"] for k in (2, 3)]
        results["after_idle_prefill_ms"] = [m["prefill_ms"] for m in after_idle]
        say(f"first request after 2.5 s idle: prefill {results['after_idle_prefill_ms']} ms")
        time.sleep(2.5)
        node = api(server.url, "GET", "/slfaas/v1/node")
        used = gpu_used_mib() - baseline
        results["mem_16"] = {"instances": len(node["Instances"]), "gpu_used_mib": used,
                             "per_instance_mib_nvml": node["Gpu"]["instances"],
                             "bound_mib": (bb["size_bytes"] >> 20) + len(names) * 1.2 * 1024}
        say(f"GPU memory with {len(node['Instances'])} instances: {used} MiB used "
            f"(bound backbone + {len(names)} x 1.2 GB = {results['mem_16']['bound_mib']:.0f} MiB); "
            f"NVML per instance: {node['Gpu']['instances']}")
        save()

        # billing on the GPU: device time from CUDA events, the H100 price, conservation
        usage = api(server.url, "GET", "/slfaas/v1/cost/usage")["Usage"]
        report = api(server.url, "GET", "/slfaas/v1/cost/report?format=json")
        warm_u = [u for u in usage if not u["cold_start"]]
        cold_u = [u for u in usage if u["cold_start"]]
        results["billing"] = {
            "device_type": usage[0]["device_type"], "invocations": len(usage), "cold": len(cold_u),
            "warm_device_s_median": med(u["batch_device_s"] for u in warm_u),
            "warm_billed_s_median": med(u["compute_device_s"] for u in warm_u),
            "warm_runtime_overhead_s_median": med(u["runtime_overhead_s"] for u in warm_u),
            "warm_cost_usd_median": str(med(Decimal(u["cost_usd"]) for u in warm_u)),
            "cold_init_s_median": med(u["init_device_s"] for u in cold_u),
            "cold_phases_s_median": {k: med(u["init_phases_s"].get(k, 0.0) for u in cold_u)
                                     for k in cold_u[0]["init_phases_s"]},
            "total_cost_usd": report["total"]["cost_usd"], "report": report}
        say("billing: " + json.dumps({k: v for k, v in results["billing"].items() if k != "report"}))
        save()

        if "scale" in phases and args.scale_to > len(names):
            more = [create(k) for k in range(len(names), args.scale_to)]
            for n in more:
                wait_active(n)
            say(f"cold-starting {len(more)} more instances ...")
            with ThreadPoolExecutor(12) as pool:
                list(pool.map(lambda n: invoke(n, event_1), more))
            names += more
            node = api(server.url, "GET", "/slfaas/v1/node")
            used = gpu_used_mib() - baseline
            per = [v for v in (node["Gpu"]["instances"] or {}).values()]
            results["scale"] = {"instances": len(node["Instances"]), "gpu_used_mib": used,
                                "gpu_total_mib": node["Gpu"]["total_mb"],
                                "per_instance_mib_median": statistics.median(per) if per else None,
                                "without_sharing_fit": int(node["Gpu"]["total_mb"] // ((bb["size_bytes"] >> 20)
                                                          + (statistics.median(per) if per else 1100)))}
            # every instance still answers
            with ThreadPoolExecutor(12) as pool:
                list(pool.map(lambda n: invoke(n, event_1), names))
            say(f"scale: {results['scale']}")
            save()

        if "integrity" in phases:
            import io
            import zipfile
            evil = ("import torch\ndef handler(event, context):\n"
                    "    p = next(p for n, p in context.model.named_parameters() if 'lora_' not in n and p.dim() == 2)\n"
                    "    p.data.view(-1)[:4096] += 1.0\n    torch.cuda.synchronize()\n    return {'tampered': True}\n")
            buf = io.BytesIO()
            with zipfile.ZipFile(buf, "w") as zf, zipfile.ZipFile(io.BytesIO(zip_adapter(adapters[0]))) as src:
                for info in src.infolist():
                    zf.writestr(info, src.read(info))
                zf.writestr("handler.py", evil)
            client.create_function(FunctionName="evil", Runtime="slfaas-lora", Role="arn:aws:iam::0:role/x",
                                   Code={"ZipFile": buf.getvalue()}, Timeout=600)
            wait_active("evil")
            clean = api(server.url, "POST", "/slfaas/v1/node/verify")["Checks"][0]
            try:
                invoke("evil", b'{"prompt": "x"}')
                write_failed = False
            except RuntimeError:   # a read-only (VMM) mapping: the GPU refused the write, the writer ended
                write_failed = True
            t0 = time.perf_counter()
            check = api(server.url, "POST", "/slfaas/v1/node/verify")["Checks"][0]
            after, _ = invoke(names[0], event_gen)
            final = api(server.url, "POST", "/slfaas/v1/node/verify")["Checks"][0]
            results["integrity"] = {"write_refused": write_failed and check["ok"],
                                    "clean_check_ok": clean["ok"], "clean_check_ms": clean["elapsed_ms"],
                                    "detected": not check["ok"], "detect_check_ms": check["elapsed_ms"],
                                    "bad_tensors": check["bad_tensors"][:4], "stopped": len(check["stopped_instances"]),
                                    "reload_s": check["reload_s"], "recovery_wall_s": time.perf_counter() - t0,
                                    "output_after_recovery_correct": after["tokens"] == texts[names[0]],
                                    "final_check_ok": final["ok"]}
            say(f"integrity: {results['integrity']}")
            save()
    finally:
        rc = server.close()
        results["server_exit"] = rc
        (out / "server.log").write_text("".join(server.lines[-400:]))
        save()
    if "pool" in phases:
        pool_phase(args, adapters, prompt, results, texts, say)
        save()
    print(json.dumps(results, indent=1, default=str))
    return 0


def pool_phase(args: argparse.Namespace, adapters: list[Path], prompt: str, results: dict,
               texts: dict[str, list[int]], say) -> None:  # type: ignore[no-untyped-def]
    """Sequential cold starts of N functions, on a server without a warm pool and on one with
    ``--warm-pool N`` (generic runtimes: imports done, no CUDA context yet): client time to
    the first response (16 tokens), billed init, init phases, greedy equality."""
    results["pool"] = {}
    for pool in (0, args.pool_size):
        results["pool"][f"warm_pool_{pool}"] = _sequential_cold_starts(args.pool_size, pool, adapters, prompt,
                                                                       texts, say)


def _sequential_cold_starts(n: int, pool: int, adapters: list[Path], prompt: str, texts: dict[str, list[int]],
                            say) -> dict:  # type: ignore[no-untyped-def]
    from slfaas.client import api, lambda_client, zip_adapter

    server = ServerProcess(Path(tempfile.mkdtemp(prefix="slfaas-gpu-pool-")), "--device", "cuda",
                           "--keep-alive-s", "3600", "--init-timeout-s", "480", "--verify-interval-s", "0",
                           "--warm-pool", str(pool))
    try:
        client = lambda_client(server.url)
        names = []
        for k in range(n):
            name = f"pool-{k}"
            client.create_function(FunctionName=name, Runtime="slfaas-lora", Role="arn:aws:iam::0:role/x",
                                   Code={"ZipFile": zip_adapter(adapters[k])}, Timeout=600)
            names.append(name)
        for name in names:
            client.get_waiter("function_active_v2").wait(FunctionName=name,
                                                         WaiterConfig={"Delay": 1, "MaxAttempts": 600})
        ready_re = r"warm-pool process \S+ ready"
        deadline = time.time() + 300
        while server.count(ready_re) < pool and time.time() < deadline:
            time.sleep(0.5)
        event = json.dumps({"prompt": prompt, "max_tokens": GEN_TOKENS, "temperature": 0,
                            "return_tokens": True}).encode()
        client_ms = []
        tokens = {}
        metrics: list[dict] = []
        for name in names:   # one at a time: each takes a ready runtime
            t0 = time.perf_counter()
            r = client.invoke(FunctionName=name, Payload=event)
            body = json.loads(r["Payload"].read())
            client_ms.append((time.perf_counter() - t0) * 1000)
            if r.get("FunctionError"):
                raise RuntimeError(f"{name}: {body}")
            tokens[name] = body["tokens"]
            metrics.append(body.get("metrics", {}))
        usage = [u for u in api(server.url, "GET", "/slfaas/v1/cost/usage")["Usage"] if u["cold_start"]]
        logs = {name: api(server.url, "GET", f"/slfaas/v1/functions/{name}/logs") for name in names[:1]}
        med = statistics.median
        out = {"functions": n, "warm_pool": pool, "client_ms": client_ms, "client_ms_median": med(client_ms),
               "tiers": [u["preload_tier"] for u in usage],
               "init_device_s_median": med(u["init_device_s"] for u in usage),
               "cold_cost_usd_median": str(med(Decimal(u["cost_usd"]) for u in usage)),
               "init_phases_s_median": {k: med(u["init_phases_s"].get(k, 0.0) for u in usage)
                                        for k in usage[0]["init_phases_s"]},
               "greedy_equal_to_node_phase": [tokens[f"pool-{k}"] == texts.get(f"fn-{k}") for k in range(n)],
               "metrics": metrics, "node_ms": [(u["end_ts"] - u["start_ts"]) * 1000 for u in usage],
               "first_log": logs}
        say(f"sequential cold starts, warm pool {pool}: {json.dumps(out)}")
        return out
    finally:
        server.close()


if __name__ == "__main__":
    sys.exit(main())
