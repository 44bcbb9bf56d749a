"""What the GPU benches share: a random-weight Llama-2-7B-shape checkpoint, adapters and a
prompt made on the spot (no downloads), the in-process PEFT reference script and small probes."""
from __future__ import annotations

import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
T0 = time.time()
PROMPT_TOKENS = 512
GEN_TOKENS = 16


def say(msg: str) -> None:
    print(f"[{time.time() - T0:6.1f}s] {msg}", flush=True)


def make_checkpoint(root: Path) -> Path:
    """Random Llama-2-7B-shaped fp16 weights, generated on the GPU, saved as safetensors."""
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig

    from slfaas.testing.tinymodels import make_tokenizer

    out = root / "llama-7b-random-v3"
    if (out / "model.safetensors").is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    cfg = LlamaConfig(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096,
                      bos_token_id=0, eos_token_id=1, tie_word_embeddings=False, torch_dtype="float16")
    cfg.save_pretrained(str(out))
    make_tokenizer(out, vocab_size=512)
    g = torch.Generator(device="cuda").manual_seed(0)
    h, i, v = 4096, 11008, 32000
    shapes = {"model.embed_tokens.weight": (v, h), "model.norm.weight": (h,), "lm_head.weight": (v, h)}
    for layer in range(32):
        p = f"model.layers.{layer}."
        shapes.update({p + "self_attn.q_proj.weight": (h, h), p + "self_attn.k_proj.weight": (h, h),
                       p + "self_attn.v_proj.weight": (h, h), p + "self_attn.o_proj.weight": (h, h),
                       p + "mlp.gate_proj.weight": (i, h), p + "mlp.up_proj.weight": (i, h),
                       p + "mlp.down_proj.weight": (h, i), p + "input_layernorm.weight": (h,),
                       p + "post_attention_layernorm.weight": (h,)})
    tensors = {}
    for name, shape in shapes.items():
        if len(shape) == 1:
            tensors[name] = torch.ones(shape, dtype=torch.float16)
        else:
            std = 1.0 / (shape[1] ** 0.5)
            tensors[name] = (torch.randn(shape, generator=g, device="cuda", dtype=torch.float16) * std).cpu()
    # Only tokenizer ids that decode to printable text by themselves can win: every generated
    # token is then streamed text, and EOS never wins, so every request runs to its max_tokens.
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(out))
    keep = torch.zeros(v, dtype=torch.bool)
    for i in range(min(v, len(tok))):
        piece = tok.decode([i])
        keep[i] = i != tok.eos_token_id and bool(piece.strip()) and piece.isascii() and piece.isprintable()
    tensors["lm_head.weight"][~keep] = 0
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def make_adapters(root: Path, base: Path, n: int) -> list[Path]:
    from slfaas.testing.tinymodels import make_random_adapter_for_config
    return [make_random_adapter_for_config(base, root / f"adapter-{k}", seed=1000 + k, rank=16,
                                           target_modules=("q_proj", "v_proj"), scale=0.05,
                                           base_model_name=str(base))
            for k in range(n)]


def make_prompt(base: Path) -> str:
    from transformers import AutoTokenizer

    from slfaas.testing.tinymodels import _CORPUS

    tok = AutoTokenizer.from_pretrained(str(base))
    ids = tok(_CORPUS * 40)["input_ids"][:PROMPT_TOKENS]
    return tok.decode(ids)


REF_SCRIPT = r'''
# In-process reference, kept alive beside the server so prefill is timed side by side with
# the functions: reads "measure K N" lines, answers with N prefill times (ms) of adapter K.
import json, sys, time, torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer
base, prompt_file = sys.argv[1], sys.argv[2]
adapters = sys.argv[3:]
prompt = open(prompt_file).read()
t0 = time.perf_counter()
model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float16, device_map="cuda")
torch.cuda.synchronize(); load_s = time.perf_counter() - t0
tok = AutoTokenizer.from_pretrained(base)
enc = tok(prompt, return_tensors="pt").to("cuda")
res = {"load_s": load_s, "prompt_tokens": int(enc["input_ids"].shape[1]), "adapters": {},
       "attention": model.config._attn_implementation}
peft = PeftModel.from_pretrained(model, adapters[0], adapter_name="a0").eval()
for k, a in enumerate(adapters[1:], 1):
    peft.load_adapter(a, adapter_name=f"a{k}")
with torch.inference_mode():
    for k, a in enumerate(adapters):
        peft.set_adapter(f"a{k}")
        out = peft.generate(**enc, max_new_tokens=%d, do_sample=False)
        ids = out[0, enc["input_ids"].shape[1]:].tolist()
        res["adapters"][a] = {"tokens": ids, "text": tok.decode(ids, skip_special_tokens=True)}
print(json.dumps(res), flush=True)
for line in sys.stdin:
    mode, k, n = line.split()
    peft.set_adapter(f"a{k}")
    times = []
    with torch.inference_mode():
        for _ in range(int(n)):
            if mode == "measure":   # backbone+adapter prefill alone (CUDA events)
                s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                s.record(); peft(**enc, logits_to_keep=1); e.record(); torch.cuda.synchronize()
                times.append(s.elapsed_time(e))
            else:                   # like-for-like TTFT: tokenize, prefill, first token on the host
                t = time.perf_counter()
                x = tok(prompt, return_tensors="pt").to("cuda")
                int(peft(**x, logits_to_keep=1).logits[:, -1].argmax(-1).item())
                times.append((time.perf_counter() - t) * 1000)
    print(json.dumps(times), flush=True)
''' % GEN_TOKENS


LOAD_PROBE = r'''
import os, sys, time, threading, torch
from pathlib import Path
path = sys.argv[1]; threads = int(sys.argv[2]); chunk = 32 << 20
size = os.path.getsize(path)
def read_only():
    bufs = {}
    pos = [0]; lock = threading.Lock()
    def w():
        b = torch.empty(chunk, dtype=torch.uint8, pin_memory=True); mv = memoryview(b.numpy())
        fd = os.open(path, os.O_RDONLY)
        while True:
            with lock:
                p = pos[0]; pos[0] += chunk
            if p >= size: break
            os.preadv(fd, [mv[:min(chunk, size - p)]], p)
        os.close(fd)
    ts = [threading.Thread(target=w) for _ in range(threads)]
    t0 = time.perf_counter(); [t.start() for t in ts]; [t.join() for t in ts]
    return size / (time.perf_counter() - t0) / 1e9
def copy_only():
    src = torch.empty(1 << 30, dtype=torch.uint8, pin_memory=True); dst = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    dst.copy_(src); torch.cuda.synchronize(); t0 = time.perf_counter()
    for _ in range(5): dst.copy_(src, non_blocking=True)
    torch.cuda.synchronize(); return 5 * (1 << 30) / (time.perf_counter() - t0) / 1e9
print(f"{read_only():.1f} {copy_only():.1f}")
'''


def gpu_used_mib() -> int:
    import torch
    free, total = torch.cuda.mem_get_info()
    return (total - free) >> 20
