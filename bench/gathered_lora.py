"""Many adapters in one forward pass: PEFT's mixed-batch loop against gathered LoRA layers.

A random-weight Llama model holds ``--adapters`` random r=16 q/v adapters in one PEFT model
(as a shared runtime does); a batch of ``--rows`` rows, each with an adapter drawn in turn,
runs one forward pass of ``--tokens`` tokens per row (1: a decode step's shape; more: a
prefill's), timed both ways, side by side, ``--reps`` times each:

* ``peft-loop``: PEFT's ``adapter_names=[...]`` forward, a loop over the adapters present in
  every LoRA layer;
* ``gathered``: ``slfaas.functions.gathered_lora``, each row's A and B gathered from stacked
  weights (what the shared runtime runs).

It prints the medians, their ratio and the largest difference of the two ways' logits, and
writes ``gathered_lora.json`` under ``--out``:

    python bench/gathered_lora.py --device cuda --shape 7b        # the GPU machine (fp16)
    python bench/gathered_lora.py --device cpu --shape small      # a CPU check (fp32), ~1 minute
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

SHAPES = {   # hidden, intermediate, layers, heads
    "small": (512, 1376, 4, 8),
    "7b": (4096, 11008, 32, 32),
}


def build(shape: str, adapters: int, device: str):  # type: ignore[no-untyped-def]
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    hidden, inter, layers, heads = SHAPES[shape]
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=heads, vocab_size=32000)
    base = LlamaForCausalLM(config).to(device=device, dtype=dtype).eval()
    lora = LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "v_proj"], lora_dropout=0.0,
                      init_lora_weights=False)            # random A and B: every adapter matters
    model: PeftModel = get_peft_model(base, lora, adapter_name="a_0")
    for k in range(1, adapters):
        model.add_adapter(f"a_{k}", lora)
    model.eval()
    return model


def timed(fn, reps: int, device: str) -> list[float]:  # type: ignore[no-untyped-def]
    import torch

    out = []
    for _ in range(reps):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def main() -> int:
    import torch

    from slfaas.functions.gathered_lora import GatheredLora

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--shape", choices=sorted(SHAPES), default=None, help="default: 7b on a GPU, small on CPU")
    ap.add_argument("--adapters", type=int, default=16)
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=1)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--out", default=os.environ.get("OUT", "bench-out"))
    args = ap.parse_args()
    shape = args.shape or ("7b" if args.device.startswith("cuda") else "small")
    model = build(shape, args.adapters, args.device)
    gathered = GatheredLora(model)
    names = [f"a_{i % args.adapters}" for i in range(args.rows)]
    ids = torch.randint(0, 32000, (args.rows, args.tokens), device=args.device, generator=None)

    def loop() -> torch.Tensor:
        return model(input_ids=ids, adapter_names=names, use_cache=False, logits_to_keep=1).logits

    def gather() -> torch.Tensor:
        with gathered.rows(names, ids.device):
            return model(input_ids=ids, adapter_names=names, use_cache=False, logits_to_keep=1).logits

    with torch.inference_mode():
        diff = float((loop().float() - gather().float()).abs().max())
        for fn in (loop, gather):         # warm both
            timed(fn, 3, args.device)
        runs: dict[str, list[float]] = {"peft-loop": [], "gathered": []}
        for _ in range(args.reps):         # interleaved: the machine's state is the same for both
            runs["peft-loop"] += timed(loop, 1, args.device)
            runs["gathered"] += timed(gather, 1, args.device)
    med = {k: statistics.median(v) for k, v in runs.items()}
    result = {"args": vars(args), "shape": shape, "median_ms": med, "speedup": med["peft-loop"] / med["gathered"],
              "max_abs_logit_diff": diff, "runs_ms": runs}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gathered_lora.json").write_text(json.dumps(result, indent=1))
    print(f"{shape} on {args.device}: {args.rows} rows × {args.tokens} token(s), {args.adapters} adapters: "
          f"peft-loop {med['peft-loop']:.1f} ms, gathered {med['gathered']:.1f} ms "
          f"({result['speedup']:.2f}×); max |logit difference| {diff:.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
