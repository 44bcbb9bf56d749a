"""Specialising a pre-warmed runtime (copying an adapter into its LoRA slots) vs loading the
same adapter with PEFT (``PeftModel.from_pretrained``, what a cold start does today), on CPU.

Both start from the same borrowed backbone (the node's sealed memfd image). PEFT's load is
timed on a fresh borrowed model each repetition (it rewrites the model's modules); the slot
copy reads the adapter from its file, from bytes already in memory (a host tier) and from a
memfd descriptor. Medians over ``--reps``; the ratio is what the docs quote (CPU timings on a
shared machine vary, ratios much less).

    python bench/slots_specialise.py [--shape tiny|medium] [--rank 16] [--slot-rank 16]
                                     [--modules q_proj,v_proj] [--reps 15] [--threads 1] [--json out.json]
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path



def _median_ms(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1000, 3)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", choices=("tiny", "medium"), default="medium")
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--slot-rank", type=int, default=16)
    ap.add_argument("--modules", default="q_proj,v_proj")
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    import torch
    from peft import PeftModel

    from slfaas.functions.adapter_tensors import AdapterSource
    from slfaas.functions.engine import BackboneSource, build_borrowed_model
    from slfaas.functions.slot_geometry import SlotGeometry
    from slfaas.functions.slots import LoraSlots
    from slfaas.gpu_node.resources.shared_weights import build_shared_image
    from slfaas.testing.tinymodels import MEDIUM, TINY, make_base_model, make_random_adapter_for_config

    if args.threads:
        torch.set_num_threads(args.threads)
    modules = tuple(m for m in args.modules.split(",") if m)
    with tempfile.TemporaryDirectory(prefix="slfaas-bench-slots-") as tmp:
        root = Path(tmp)
        base = make_base_model(root / "base", shape=MEDIUM if args.shape == "medium" else TINY)
        adapter = make_random_adapter_for_config(base, root / "adapter", seed=1, rank=args.rank,
                                                 target_modules=modules, dtype="float32")
        image = build_shared_image(base)
        source = BackboneSource(fd=image.fd)

        def borrowed():  # noqa: ANN202
            state, keep = source.tensors()
            return build_borrowed_model(state, base), keep

        peft_s = []
        for _ in range(args.reps):
            model, keep = borrowed()
            t0 = time.perf_counter()
            PeftModel.from_pretrained(model, str(adapter), is_trainable=False, torch_device="cpu").eval()
            peft_s.append(time.perf_counter() - t0)
            del model, keep

        model, keep = borrowed()
        slots = LoraSlots(model, SlotGeometry(args.slot_rank, frozenset(modules)))
        raw = (adapter / "adapter_model.safetensors").read_bytes()
        config = json.loads((adapter / "adapter_config.json").read_text())
        fd = os.memfd_create("adapter")
        os.write(fd, raw)
        sources = {"file": AdapterSource.from_dir(adapter), "bytes": AdapterSource(config, weights_bytes=raw),
                   "memfd": AdapterSource(config, weights_fd=fd)}
        slot_s: dict[str, list[float]] = {k: [] for k in sources}
        for _ in range(args.reps):
            for kind, src in sources.items():   # interleaved: drift hits every kind alike
                slots.clear()
                t0 = time.perf_counter()
                slots.load(src)
                slot_s[kind].append(time.perf_counter() - t0)
        os.close(fd)

    result = {
        "shape": args.shape, "rank": args.rank, "slot_rank": args.slot_rank, "modules": list(modules),
        "adapter_bytes": len(raw), "slot_bytes": slots.nbytes, "reps": args.reps,
        "threads": torch.get_num_threads(),
        "peft_from_pretrained_ms": _median_ms(peft_s),
        "slots_ms": {k: _median_ms(v) for k, v in slot_s.items()},
    }
    result["peft_over_slots"] = {k: round(result["peft_from_pretrained_ms"] / v, 1)
                                 for k, v in result["slots_ms"].items()}
    print(f"{args.shape} backbone, r={args.rank} adapter on {','.join(modules)} ({len(raw) / 1e6:.2f} MB), "
          f"slots r={args.slot_rank}, {args.reps} reps, {result['threads']} thread(s)")
    print(f"  PEFT from_pretrained   median {result['peft_from_pretrained_ms']:9.3f} ms")
    for kind, ms in result["slots_ms"].items():
        print(f"  slots from {kind:<6}      median {ms:9.3f} ms   ({result['peft_over_slots'][kind]}x faster)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
