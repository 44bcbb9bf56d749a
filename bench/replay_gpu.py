"""The policy comparison on a GPU: serverlesslora, no-sharing, serverlessllm-like and serverful,
each run for real on a fresh `slfaas server` against the same slice of the Azure conversation
trace (random-weight Llama-2-7B shape, fp16, 16 r=16 adapters; no downloads).

Two commands of under 10 minutes each on one H200, writing into the same --out (the second
adds its policies to the first's comparison):

    python bench/replay_gpu.py --policies serverlesslora,no-sharing --out results/replay
    python bench/replay_gpu.py --policies serverlessllm-like,serverful --out results/replay

Both must use the same slice and settings (the defaults below are the chosen ones; the script
refuses to merge different ones). Each writes comparison.json, table.md, report.html, PNGs
and each policy's requests.jsonl under --out. A smoke test on CPU, with a tiny model:

    python bench/replay_gpu.py --tiny --device cpu --out /tmp/replay-smoke
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from gpu_assets import make_adapters, make_checkpoint

from slfaas.bench import BenchError, WorkloadSpec, build_workload
from slfaas.bench.compare import CompareSpec, run_comparison
from slfaas.bench.compare_report import check_mergeable, savings_in, write_comparison
from slfaas.bench.compare_table import markdown_table
from slfaas.bench.policies import POLICIES, CommonSettings, parse_policies

ROOT = Path(__file__).resolve().parents[1]
TRACE = ROOT / "bench" / "data" / "AzureLLMInferenceTrace_conv.csv"
T0 = time.time()


@dataclass(frozen=True)
class Settings:
    """The slice and settings every policy gets, chosen before any run (docs/BENCHMARKS.md)."""

    functions: int
    start_s: float
    duration_s: float
    max_prompt: int
    max_output: int
    slo_ms: float
    keep_alive_s: float
    max_instances: int
    memory_mb: int
    instance_gpu_mb: int
    popularity: str = "zipf:1.0"
    speedup: float = 1.0
    batch: int = 8
    prewarmed: int = 0      # serverlesslora's pre-warmed runtimes (0: the server's default)


GPU = Settings(functions=16, start_s=600.0, duration_s=60.0, max_prompt=512, max_output=64, slo_ms=2000.0,
               keep_alive_s=60.0, max_instances=64, memory_mb=10240, instance_gpu_mb=4096, prewarmed=16)
TINY = Settings(functions=4, start_s=0.0, duration_s=8.0, max_prompt=32, max_output=6, slo_ms=20000.0,
                keep_alive_s=30.0, max_instances=8, memory_mb=1024, instance_gpu_mb=1536)


def say(msg: str) -> None:
    print(f"[{time.time() - T0:6.1f}s] {msg}", flush=True)


def readable(model_dir: Path) -> Path:
    """Instances of the no-sharing policy load the checkpoint themselves, as their own uid."""
    for f in model_dir.iterdir():
        if f.is_file():
            os.chmod(f, f.stat().st_mode | 0o044)
    return model_dir


def tiny_model(work: Path, n: int) -> tuple[Path, list[Path]]:
    from slfaas.testing.tinymodels import make_adapter, make_base_model

    base = work / "tiny-base"
    if not (base / "config.json").is_file():
        make_base_model(base)
    return readable(base), [make_adapter(base, work / f"tiny-adapter-{k}", seed=k + 1, base_model_name=str(base))
                            for k in range(n)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policies", default=",".join(POLICIES), help="comma-separated subset of " + ", ".join(POLICIES))
    ap.add_argument("--out", default=os.environ.get("OUT", "bench-out/replay"))
    ap.add_argument("--work", default="/tmp/slfaas-gpu-bench", help="checkpoint, adapters, servers' data dirs")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="a tiny random model: a CPU smoke test of the whole script")
    ap.add_argument("--synthetic", help="poisson:RATE or gamma:RATE:CV arrivals instead of the trace's (a low-rate slice)")
    ap.add_argument("--max-requests", type=int, help="cap the slice (a quicker run)")
    ap.add_argument("--server-args", default="", help="extra `slfaas server` arguments, e.g. --insecure-sandbox")
    ap.add_argument("--fresh", action="store_true", help="replace --out's comparison instead of adding to it")
    args = ap.parse_args()
    settings = TINY if args.tiny else GPU
    work, out = Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    try:
        policies = parse_policies(args.policies)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.tiny:
        base, adapters = tiny_model(work, settings.functions)
    else:
        say("random Llama-2-7B-shape fp16 checkpoint (made once, kept in --work) ...")
        base = readable(make_checkpoint(work))
        adapters = make_adapters(work, base, settings.functions)
    say(f"base {base}, {len(adapters)} adapters; policies {', '.join(policies)}")
    spec = WorkloadSpec(TRACE, settings.functions, settings.popularity, base,
                        0.0 if args.synthetic else settings.start_s, settings.duration_s, args.max_requests,
                        args.synthetic, settings.max_prompt, settings.max_output, "fn", 0)
    workload = build_workload(spec)
    say(f"workload: {len(workload.items)} requests over {workload.describe()['span_s']:.1f} s of trace, "
        f"{workload.prompt_misses} prompts off their exact length")
    common = CommonSettings(device=args.device, keep_alive_s=settings.keep_alive_s,
                            max_instances=settings.max_instances, memory_mb=settings.memory_mb,
                            instance_gpu_mb=settings.instance_gpu_mb, max_batch_size=settings.batch,
                            slo_ms=settings.slo_ms, server_args=tuple(args.server_args.split()),
                            prewarmed=settings.prewarmed)
    try:
        if not args.fresh:
            check_mergeable(out, workload.describe(), common)
        # a request waits out 429s for up to 4 minutes (then it is an error, an SLO miss): each
        # command stays within its 10 minutes however far a baseline falls behind
        result = run_comparison(workload, CompareSpec(policies, tuple(adapters), common, settings.speedup,
                                                      retry_throttled_s=240.0, work_dir=work / "servers"), say=say)
        paths = write_comparison(result, out, merge_existing=not args.fresh)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    data = json.loads(paths["json"].read_text())
    print(markdown_table(data["rows"]))
    print(json.dumps(savings_in(data), indent=1))
    say("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
