"""Where a decode step goes: the same 7B-shape generation timed in-process and served.

One command on a GPU machine (random-weight Llama-2-7B shape, fp16; no downloads):

    python bench/decode_step.py [--tokens 64] [--out DIR]

It times, per decode step ((wall - prefill) / (tokens - 1), medians of ``--reps``):

- ``engine-peft``: the runtime's engine in this process, its adapter loaded by PEFT, the
  backbone from the checkpoint;
- ``engine-slots``: the same engine pre-warmed with LoRA slots, then specialised;
- ``served``: a server (default sandbox), one function, invoked through boto3; per step from
  the runtime's own metrics (device time, prefill) and from the client's wall clock.

A torch profile of a few decode steps of ``engine-slots`` (top operators by CPU and by CUDA
time) and, while a long served request runs, ``nvidia-smi pmon`` and ``top`` snapshots and a
``py-spy dump`` of the runtime (where py-spy is installed) go to the output directory.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from gpu_assets import make_adapters, make_checkpoint, make_prompt, say   # bench/gpu_assets.py

from slfaas.client import lambda_client, zip_adapter
from slfaas.testing.serverproc import ServerProcess


def time_engine(engine, prompt: str, tokens: int, reps: int) -> dict:
    from slfaas.functions.events import GenerationRequest

    req = GenerationRequest(prompt, max_tokens=tokens, temperature=0, ignore_eos=True)
    engine.generate(GenerationRequest(prompt, max_tokens=4, temperature=0, ignore_eos=True))
    steps, prefill, device = [], [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        gen = engine.generate(req)
        wall_ms = (time.perf_counter() - t0) * 1000
        steps.append((wall_ms - gen.prefill_ms) / (tokens - 1))
        prefill.append(gen.prefill_ms)
        device.append(gen.device_ms)
    med = statistics.median
    return {"step_ms": med(steps), "prefill_ms": med(prefill), "device_ms": med(device), "steps_ms": steps}


def profile_decode(engine, prompt: str, out: Path) -> None:
    import torch
    from torch.profiler import ProfilerActivity, profile

    from slfaas.functions.events import GenerationRequest

    req = GenerationRequest(prompt, max_tokens=9, temperature=0, ignore_eos=True)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        engine.generate(req)
        torch.cuda.synchronize()
    table = prof.key_averages()
    text = ("# by self CPU time\n" + table.table(sort_by="self_cpu_time_total", row_limit=30)
            + "\n# by CUDA time\n" + table.table(sort_by="cuda_time_total", row_limit=30))
    (out / "profile_slots.txt").write_text(text)


def snapshots(out: Path, label: str) -> None:
    """What the host and the GPU are doing now (a long served request is running)."""
    def run(cmd: list[str]) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout
        except (OSError, subprocess.TimeoutExpired) as e:
            return f"{cmd[0]}: {e}\n"
    text = "## nvidia-smi pmon\n" + run(["nvidia-smi", "pmon", "-c", "3", "-s", "um"])
    text += "## top\n" + run(["top", "-b", "-n", "1", "-w", "220"])[:6000]
    pids = run(["pgrep", "-f", "slfaas.functions"]).split()
    for pid in pids[:4]:
        text += f"## py-spy dump {pid}\n" + run(["py-spy", "dump", "--pid", pid])
        text += f"## /proc/{pid}/status\n" + run(["grep", "-E", "Cpus_allowed_list|voluntary", f"/proc/{pid}/status"])
    (out / f"snapshots_{label}.txt").write_text(text)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=64, help="tokens per timed generation")
    ap.add_argument("--reps", type=int, default=5, help="timed generations per variant")
    ap.add_argument("--phases", default="engine-peft,engine-slots,served")
    ap.add_argument("--server-arg", action="append", default=[], help="extra `slfaas server` argument (repeat)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="slfaas-decode-"))
    out.mkdir(parents=True, exist_ok=True)
    phases = args.phases.split(",")
    say("making the model and an adapter ...")
    assets = Path(tempfile.gettempdir()) / "slfaas-gpu-bench"
    base = make_checkpoint(assets)
    adapter = make_adapters(assets, base, 1)[0]
    prompt = make_prompt(base)
    results: dict = {"tokens": args.tokens, "reps": args.reps}

    import torch

    from slfaas.functions.adapter_tensors import AdapterSource
    from slfaas.functions.backbone_source import BackboneSource
    from slfaas.functions.engine import LoraEngine

    source = BackboneSource("cuda:0", private="checkpoint")
    if "engine-peft" in phases:
        say("engine, PEFT ...")
        engine = LoraEngine(source, base, adapter)
        results["engine-peft"] = time_engine(engine, prompt, args.tokens, args.reps)
        say(f"engine-peft: {results['engine-peft']['step_ms']:.1f} ms/step")
        del engine
        torch.cuda.empty_cache()
    if "engine-slots" in phases:
        say("engine, slots ...")
        engine = LoraEngine.prewarmed(source, base)
        engine.specialise(AdapterSource.from_dir(adapter))
        results["engine-slots"] = time_engine(engine, prompt, args.tokens, args.reps)
        say(f"engine-slots: {results['engine-slots']['step_ms']:.1f} ms/step")
        profile_decode(engine, prompt, out)
        del engine
        torch.cuda.empty_cache()
    if "served" in phases:
        say("served ...")
        shutil.rmtree(out / "server", ignore_errors=True)
        server = ServerProcess(out / "server", "--device", "cuda:0", "--verify-interval-s", "0",
                               *args.server_arg, timeout_s=600)
        try:
            client = lambda_client(server.url)
            client.create_function(FunctionName="d", Runtime="slfaas-lora", Role="arn:aws:iam::0:role/x",
                                   Code={"ZipFile": zip_adapter(adapter)}, Timeout=600, MemorySize=4096)
            client.get_waiter("function_active_v2").wait(FunctionName="d", WaiterConfig={"Delay": 1})

            def invoke(tokens: int) -> tuple[float, dict]:
                event = {"prompt": prompt, "max_tokens": tokens, "temperature": 0, "ignore_eos": True}
                t0 = time.perf_counter()
                r = client.invoke(FunctionName="d", Payload=json.dumps(event).encode())
                body = json.loads(r["Payload"].read())
                return (time.perf_counter() - t0) * 1000, body["metrics"]

            invoke(4)   # the cold start
            rows = []
            for _ in range(args.reps):
                wall_ms, m = invoke(args.tokens)
                rows.append({"wall_ms": wall_ms, **m,
                             "step_ms_wall": (wall_ms - m["ttft_ms"]) / (args.tokens - 1),
                             "step_ms_device": (m["device_ms"] - m["prefill_ms"]) / (args.tokens - 1)})
            med = statistics.median
            results["served"] = {"step_ms_wall": med(r["step_ms_wall"] for r in rows),
                                 "step_ms_device": med(r["step_ms_device"] for r in rows), "rows": rows}
            say(f"served: {results['served']['step_ms_wall']:.1f} ms/step (device "
                f"{results['served']['step_ms_device']:.1f})")
            long = threading.Thread(target=invoke, args=(max(256, args.tokens * 4),))
            long.start()
            time.sleep(3)
            snapshots(out, "served")
            long.join()
        finally:
            server.stop()
            (out / "server.log").write_text("".join(server.lines[-400:]))
    (out / "decode_step.json").write_text(json.dumps(results, indent=2))
    print(json.dumps({k: (v if not isinstance(v, dict) else {kk: vv for kk, vv in v.items() if kk != "rows"})
                      for k, v in results.items()}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
