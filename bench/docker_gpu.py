"""Process vs Docker sandboxes side by side: two servers on one device, the same N functions
of one backbone deployed on both, every measurement interleaved between them.

    python bench/docker_gpu.py [--functions 16] [--cold-samples 6] [--rounds 5] [--out DIR]
    python bench/docker_gpu.py --tiny --device cpu --functions 2 --cold-samples 1 --rounds 1   # smoke test

Needs a Docker engine and the runtime image (``slfaas node build-image``, or ``--from-host`` on a
host without a registry). On the GPU: a random-weight Llama-2-7B shape in fp16 (bench/gpu_assets.py).

Measured per sandbox: greedy outputs against in-process PEFT; cold starts served by a
pre-warmed runtime (a never-invoked function each, one sandbox then the other, waiting for both
pools to be ready); warm TTFT (the runtime's own, every function, alternating order); device
memory per instance (GPU MiB from the node; on CPU the instance's PSS); the namespaces an
instance shares with the host; a function writing into the backbone (it must die alone, the
backbone stays intact, the others keep answering); containers left after the server stops.
Writes results.json under --out and prints a table.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from slfaas.client import api, lambda_client, zip_adapter
from slfaas.testing.serverproc import ServerProcess

from gpu_assets import GEN_TOKENS, REF_SCRIPT, say

SANDBOXES = ("process", "docker")
PROBE = '''
import os
def handler(event, context):
    if "prompt" in event:
        return context.generate_event(event)
    ns = {}
    for kind in ("pid", "ipc", "net", "mnt", "user"):
        try:
            ns[kind] = os.readlink(f"/proc/self/ns/{kind}")
        except OSError as exc:
            ns[kind] = f"error {exc.errno}"
    return {"ns": ns, "uid": os.getuid(), "pid": os.getpid()}
'''
EVIL = '''
import torch
def handler(event, context):
    p = next(p for n, p in context.model.named_parameters() if "lora_" not in n and p.dim() == 2)
    p.data.view(-1)[:4096] += 1.0
    if p.is_cuda:
        torch.cuda.synchronize()
    return {"tampered": True}
'''


def with_handler(adapter: Path, handler: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf, zipfile.ZipFile(io.BytesIO(zip_adapter(adapter))) as src:
        for info in src.infolist():
            zf.writestr(info, src.read(info))
        zf.writestr("handler.py", handler)
    return buf.getvalue()


def assets(args: argparse.Namespace, work: Path) -> tuple[Path, list[Path], str, dict[str, list[int]]]:
    """(base model, adapters, prompt, greedy reference tokens per adapter from in-process PEFT)."""
    if args.tiny:
        from slfaas.testing.tinymodels import make_adapter, make_base_model
        base = work / "tiny-base"
        if not (base / "config.json").is_file():
            make_base_model(base)
        adapters = [work / f"tiny-adapter-{k}" for k in range(args.functions)]
        for k, out in enumerate(adapters):
            if not (out / "adapter_model.safetensors").is_file():
                make_adapter(base, out, seed=300 + k, base_model_name=str(base))
        prompt = "the quick brown fox jumps over the lazy dog"
        return base, adapters, prompt, _cpu_reference(base, adapters, prompt)
    import subprocess

    from gpu_assets import make_adapters, make_checkpoint, make_prompt
    base = make_checkpoint(work)
    adapters = make_adapters(work, base, args.functions)
    prompt = make_prompt(base)
    (work / "prompt.txt").write_text(prompt)
    ref = subprocess.Popen([sys.executable, "-c", REF_SCRIPT, str(base), str(work / "prompt.txt"),
                            *map(str, adapters)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert ref.stdout is not None and ref.stdin is not None
    doc = json.loads(ref.stdout.readline())
    ref.stdin.close()
    ref.wait(60)
    return base, adapters, prompt, {a: doc["adapters"][str(a)]["tokens"] for a in map(str, adapters)}


def _cpu_reference(base: Path, adapters: list[Path], prompt: str) -> dict[str, list[int]]:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(base))
    enc = tok(prompt, return_tensors="pt")
    out: dict[str, list[int]] = {}
    for a in adapters:
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(base)), str(a)).eval()
        with torch.inference_mode():
            ids = model.generate(**enc, max_new_tokens=GEN_TOKENS, do_sample=False)
        out[str(a)] = ids[0, enc["input_ids"].shape[1]:].tolist()
    return out


class Side:
    """One server and its sandbox."""

    def __init__(self, sandbox: str, data_dir: Path, args: argparse.Namespace):
        extra = ["--docker-image", args.image] if sandbox == "docker" else []
        self.sandbox = sandbox
        self.server = ServerProcess(data_dir, "--device", args.device, "--sandbox", sandbox, "--keep-alive-s", "3600",
                                    "--prewarm-min", "1", "--log-level", "info", *extra, *args.server_args.split(),
                                    timeout_s=300)
        self.client = lambda_client(self.server.url, max_pool_connections=32)

    def deploy(self, name: str, code: bytes, memory_mb: int) -> None:
        self.client.create_function(FunctionName=name, Runtime="slfaas-lora", Role="arn:aws:iam::0:role/x",
                                    Code={"ZipFile": code}, Timeout=600, MemorySize=memory_mb)
        self.client.get_waiter("function_active_v2").wait(FunctionName=name,
                                                          WaiterConfig={"Delay": 0.5, "MaxAttempts": 1200})

    def invoke(self, name: str, event: dict) -> tuple[dict, float]:
        """(the response body, its request id added; wall ms at the client)."""
        t0 = time.perf_counter()
        resp = self.client.invoke(FunctionName=name, Payload=json.dumps(event).encode())
        body = json.loads(resp["Payload"].read())
        wall_ms = (time.perf_counter() - t0) * 1000
        if resp.get("FunctionError"):
            raise RuntimeError(f"{self.sandbox} {name}: {body}")
        body["request_id"] = resp["ResponseMetadata"]["RequestId"]
        return body, wall_ms

    def node(self) -> dict:
        return api(self.server.url, "GET", "/slfaas/v1/node")

    def prewarmed_ready(self) -> int:
        return sum(p["ready"] for p in self.node()["Pools"] if p["name"] == "prewarmed")

    def usage(self, request_id: str) -> dict:
        rows = api(self.server.url, "GET", "/slfaas/v1/cost/usage")["Usage"]
        return next((u for u in rows if u["request_id"] == request_id), {})


def wait_until(pred, timeout_s: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.25)


def pss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/smaps_rollup") as fh:
        return next(int(m.group(1)) for line in fh if (m := re.match(r"^Pss:\s+(\d+) kB", line))) / 1024


def measure(args: argparse.Namespace, out: Path) -> dict:
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    base, adapters, prompt, reference = assets(args, work)
    say(f"assets: {base.name}, {len(adapters)} adapters")
    memory_mb = 10240 if args.device.startswith("cuda") else 2048
    gen = {"prompt": prompt, "max_tokens": GEN_TOKENS, "temperature": 0, "return_tokens": True}
    first = {"prompt": prompt, "max_tokens": 1, "temperature": 0}
    res: dict = {"device": args.device, "functions": args.functions, "command": " ".join(sys.argv)}
    tmp = Path(tempfile.mkdtemp(prefix="slfaas-dkgpu-"))
    sides: dict[str, Side] = {}
    cold: dict[str, list[float]] = {s: [] for s in SANDBOXES}
    tiers: dict[str, list[str]] = {s: [] for s in SANDBOXES}
    try:
        for s in SANDBOXES:
            sides[s] = Side(s, tmp / s, args)
        for k, a in enumerate(adapters):
            for side in sides.values():
                side.deploy(f"fn-{k}", with_handler(a, PROBE), memory_mb)
        say("deployed; waiting for both pre-warmed pools")
        order = list(SANDBOXES)
        tokens: dict[str, dict[str, list[int]]] = {s: {} for s in SANDBOXES}
        for k in range(min(args.cold_samples, len(adapters))):
            for s in order:
                wait_until(lambda: sides[s].prewarmed_ready() >= 1, 600, f"{s}'s pre-warmed runtime")
                body, wall_ms = sides[s].invoke(f"fn-{k}", gen)
                cold[s].append(wall_ms)
                tiers[s].append(sides[s].usage(body["request_id"]).get("preload_tier", "?"))
                tokens[s][str(adapters[k])] = body["tokens"]
            order.reverse()
            say(f"cold start {k}: " + ", ".join(f"{s} {cold[s][-1]:.0f} ms" for s in SANDBOXES))
        rest = range(args.cold_samples, len(adapters))
        for k in rest:   # the others start now (any source), for outputs, memory and warm TTFT
            for s in SANDBOXES:
                tokens[s][str(adapters[k])] = sides[s].invoke(f"fn-{k}", gen)[0]["tokens"]
        ttft: dict[str, list[float]] = {s: [] for s in SANDBOXES}
        for r in range(args.rounds):
            for k in range(len(adapters)):
                for s in (SANDBOXES if (r + k) % 2 == 0 else SANDBOXES[::-1]):
                    ttft[s].append(sides[s].invoke(f"fn-{k}", first)[0]["metrics"]["ttft_ms"])
        memory: dict[str, list[float]] = {}
        for s, side in sides.items():
            insts = [i for i in side.node()["Instances"] if i["function_name"].startswith("fn-")]
            memory[s] = [float(i["gpu_mb"]) if i.get("gpu_mb") is not None else pss_mb(i["pid"]) for i in insts]
        probes = {s: sides[s].invoke("fn-0", {"probe": True})[0] for s in SANDBOXES}
        host_ns = {kind: os.readlink(f"/proc/self/ns/{kind}") for kind in ("pid", "ipc", "net", "mnt", "user")}
        res["namespaces_shared_with_host"] = {s: sorted(k for k, v in probes[s]["ns"].items() if v == host_ns[k])
                                              for s in SANDBOXES}
        res["uid"] = {s: probes[s]["uid"] for s in SANDBOXES}
        res["attack"] = {s: write_attack(sides[s], adapters[0], memory_mb, gen, tokens[s][str(adapters[0])])
                         for s in SANDBOXES}
        res.update(per_sandbox(cold, tiers, ttft, memory, tokens, reference))
        res["containers_before_stop"] = containers_left(sides["docker"].server.data_dir)
    finally:
        # what was measured so far, also when a step failed or the run was cut short
        (out / "partial.json").write_text(json.dumps({**res, "cold_ms": cold, "cold_tiers": tiers}, default=str))
        for s, side in sides.items():
            res.setdefault("server_exit", {})[s] = side.server.close()
            (out / f"server-{s}.log").write_text("".join(side.server.lines[-400:]))
    res["containers_left"] = containers_left(tmp / "docker")
    shutil.rmtree(tmp, ignore_errors=True)
    return res


def write_attack(side: Side, adapter: Path, memory_mb: int, gen: dict, expected: list[int]) -> dict:
    """A function writes into the borrowed backbone: it must fail alone, the backbone intact."""
    side.deploy("evil", with_handler(adapter, EVIL), memory_mb)
    try:
        side.invoke("evil", {"prompt": "x"})
        refused = False
    except RuntimeError:   # read-only mapping: the write faulted and ended the writer
        refused = True
    check = api(side.server.url, "POST", "/slfaas/v1/node/verify")["Checks"][0]
    body, _ = side.invoke("fn-0", gen)
    return {"write_refused": refused, "backbone_intact": bool(check["ok"]),
            "neighbour_output_unchanged": body["tokens"] == expected}


def containers_left(data_dir: Path) -> int | None:
    """Containers of the Docker side's node (labelled with its data dir) still on the engine."""
    try:
        import docker
        client = docker.from_env()
        return len(client.containers.list(all=True, filters={"label": f"slfaas.owner={data_dir}"}))
    except Exception:   # no engine: nothing can be left
        return None


def per_sandbox(cold, tiers, ttft, memory, tokens, reference) -> dict:  # type: ignore[no-untyped-def]
    def med(xs: list[float]) -> float | None:
        return round(statistics.median(xs), 2) if xs else None
    rows = {}
    for s in SANDBOXES:
        equal = [tokens[s].get(a) == ref for a, ref in reference.items()]
        rows[s] = {"cold_prewarmed_ms": med(cold[s]), "cold_samples_ms": [round(x, 1) for x in cold[s]],
                   "cold_tiers": tiers[s], "warm_ttft_ms": med(ttft[s]), "ttft_samples": len(ttft[s]),
                   "memory_per_instance_mb": med(memory[s]), "instances": len(memory[s]),
                   "greedy_equal_peft": sum(equal), "greedy_total": len(equal)}
    p, d = rows["process"], rows["docker"]

    def ratio(key: str) -> float | None:
        return round(d[key] / p[key], 3) if d[key] and p[key] else None
    return {"sandboxes": rows, "docker_over_process": {k: ratio(k) for k in
                                                        ("cold_prewarmed_ms", "warm_ttft_ms", "memory_per_instance_mb")}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.environ.get("OUT", "bench-out"))
    ap.add_argument("--work", default="/tmp/gw")
    ap.add_argument("--device", default="cuda:0")
    ap.add_argument("--tiny", action="store_true", help="the tiny random Llama (CPU smoke test)")
    ap.add_argument("--functions", type=int, default=16)
    ap.add_argument("--cold-samples", type=int, default=6, help="pre-warmed cold starts per sandbox")
    ap.add_argument("--rounds", type=int, default=5, help="warm TTFT samples per function and sandbox")
    ap.add_argument("--image", default="slfaas/runtime:local")
    ap.add_argument("--server-args", default="", help="extra `slfaas server` arguments for both servers")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res = measure(args, out)
    (out / "results.json").write_text(json.dumps(res, indent=1))
    print(f"\n{'':28}{'process':>12}{'docker':>12}{'docker/process':>16}")
    for key, label in (("cold_prewarmed_ms", "pre-warmed cold start ms"), ("warm_ttft_ms", "warm TTFT ms"),
                       ("memory_per_instance_mb", "memory per instance MB")):
        row = [res["sandboxes"][s][key] for s in SANDBOXES]
        print(f"{label:28}{row[0]!s:>12}{row[1]!s:>12}{res['docker_over_process'][key]!s:>16}")
    for s in SANDBOXES:
        r = res["sandboxes"][s]
        print(f"{s}: greedy = PEFT {r['greedy_equal_peft']}/{r['greedy_total']}, cold tiers {r['cold_tiers']}, "
              f"host namespaces shared {res['namespaces_shared_with_host'][s]}, attack {res['attack'][s]}")
    print(f"containers left after stop: {res['containers_left']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
