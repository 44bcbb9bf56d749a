"""Generation throughput with continuous batching (``BatchEngine``) vs one request at a time
(``LoraEngine``), side by side on CPU, on the same borrowed backbone and adapter.

The workload: ``--requests`` greedy requests with prompts of mixed lengths (4 to ~``--max-prompt``
tokens) and ``--tokens`` new tokens each (``ignore_eos``). Unbatched runs them one after the
other; batched queues them all at once with a batch limit of B (requests join as others
finish). The two are interleaved ``--reps`` times (so machine load hits both alike) and every
batched run's tokens are checked against the unbatched ones. Reported: tokens/s medians and
their ratio (CPU timings on a shared machine vary; ratios much less).

    python bench/batching_cpu.py [--shape tiny|medium] [--batch 2,4,8,16] [--requests 32]
                                 [--tokens 64] [--max-prompt 96] [--reps 3] [--threads 1] [--json out.json]
"""
import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

WORDS = ("the quick brown fox jumps over the lazy dog serverless functions share one backbone ahoy matey "
         "the sea is wide and the rum is gone low rank adapters fine tune large language models").split()


def _prompts(n: int, max_words: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, max_words))) for _ in range(n)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", choices=("tiny", "medium"), default="tiny")
    ap.add_argument("--batch", default="2,4,8,16", help="batch limits to measure, comma-separated")
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--max-prompt", type=int, default=96, help="most words in a prompt (about as many tokens)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    import torch

    from slfaas.functions.batching import BatchEngine
    from slfaas.functions.engine import BackboneSource, LoraEngine
    from slfaas.functions.events import parse_event
    from slfaas.gpu_node.resources.shared_weights import build_shared_image
    from slfaas.testing.tinymodels import MEDIUM, TINY, make_adapter, make_base_model

    if args.threads:
        torch.set_num_threads(args.threads)
    limits = [int(b) for b in args.batch.split(",") if b]
    reqs = [parse_event({"prompt": p, "max_tokens": args.tokens, "temperature": 0, "ignore_eos": True})
            for p in _prompts(args.requests, args.max_prompt, seed=1)]
    with tempfile.TemporaryDirectory(prefix="slfaas-bench-batching-") as tmp:
        root = Path(tmp)
        base = make_base_model(root / "base", shape=MEDIUM if args.shape == "medium" else TINY)
        adapter = make_adapter(base, root / "adapter", seed=3)
        image = build_shared_image(base)
        engine = LoraEngine(BackboneSource(fd=image.fd), base, adapter)
        prompt_tokens = [int(engine.encode(r).shape[1]) for r in reqs]
        total_tokens = args.requests * args.tokens

        def unbatched() -> tuple[float, list[tuple[int, ...]]]:
            t0 = time.perf_counter()
            out = [engine.generate(r).token_ids for r in reqs]
            return time.perf_counter() - t0, out

        def batched(limit: int) -> tuple[float, list[tuple[int, ...]], int]:
            be = BatchEngine(engine, limit)
            try:
                t0 = time.perf_counter()
                out = [g.token_ids for g in be.generate_many(reqs)]
                return time.perf_counter() - t0, out, be.passes
            finally:
                be.close()

        reference = unbatched()[1]   # warm-up, and the outputs every batched run must reproduce
        alone_s: list[float] = []
        together_s: dict[int, list[float]] = {b: [] for b in limits}
        passes: dict[int, int] = {}
        for _ in range(args.reps):
            seconds, out = unbatched()
            assert out == reference
            alone_s.append(seconds)
            for b in limits:
                seconds, out, passes[b] = batched(b)
                if out != reference:
                    print(f"batch {b}: outputs differ from the unbatched ones", file=sys.stderr)
                    return 1
                together_s[b].append(seconds)

    alone_tps = total_tokens / statistics.median(alone_s)
    rows = [{"batch_limit": b, "tokens_per_s": round(total_tokens / statistics.median(together_s[b]), 1),
             "ratio_to_unbatched": round(statistics.median(alone_s) / statistics.median(together_s[b]), 2),
             "forward_passes": passes[b], "outputs_equal": True} for b in limits]
    result = {"shape": args.shape, "requests": args.requests, "new_tokens_each": args.tokens,
              "prompt_tokens": {"min": min(prompt_tokens), "median": statistics.median(prompt_tokens),
                                "max": max(prompt_tokens)},
              "threads": torch.get_num_threads(), "reps": args.reps,
              "unbatched": {"tokens_per_s": round(alone_tps, 1), "forward_passes": total_tokens},
              "batched": rows}
    print(f"{args.shape} model, {args.requests} requests × {args.tokens} tokens, prompts "
          f"{min(prompt_tokens)}–{max(prompt_tokens)} tokens, {result['threads']} thread(s), median of {args.reps}")
    print(f"{'batch limit':>11} {'tokens/s':>10} {'× unbatched':>12} {'passes':>7}")
    print(f"{1:>11} {alone_tps:>10.1f} {1.0:>12.2f} {total_tokens:>7}   (one at a time, LoraEngine)")
    for r in rows:
        print(f"{r['batch_limit']:>11} {r['tokens_per_s']:>10.1f} {r['ratio_to_unbatched']:>12.2f} "
              f"{r['forward_passes']:>7}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
