"""Tiny random Llama-style base models and LoRA adapters, made locally.

No model hub is reachable from our machines, so tests, the demo and the benchmarks build
real Hugging Face checkpoints here with transformers/peft ``save_pretrained`` and load them
through the same code path as downloaded ones.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

# Enough English that a byte-level BPE learns useful merges; the words are what the demo's
# adapters are trained to say.
_CORPUS = (
    "the quick brown fox jumps over the lazy dog. serverless functions share one backbone. "
    "ahoy matey, the sea is wide and the rum is gone! arr, hoist the sails and find the treasure. "
    "dear sir, thank you kindly for your letter; we shall reply in due course. "
    "low rank adapters fine tune large language models cheaply. tokens stream to the client. "
    "a cold start loads libraries, the device context, the backbone and the adapter. "
    "hello world, how are you today? i am fine, thank you. numbers 0 1 2 3 4 5 6 7 8 9. "
)


@dataclass(frozen=True)
class TinyShape:
    """Llama hyper-parameters; ``TINY`` for tests, ``MEDIUM`` (~240 MB fp32) for memory benches."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int


TINY = TinyShape(64, 128, 2, 4, 2, 512)
MEDIUM = TinyShape(768, 2048, 8, 12, 4, 8192)

# The prompt that ``make_trained_adapter`` adapters answer, and two sentences (words from
# ``_CORPUS``) for two visibly different demo adapters.
DEMO_PROMPT = "Tell me something:"
DEMO_TEXTS = {
    "pirate": "ahoy matey! hoist the sails, the rum is gone and the treasure is over the sea.",
    "butler": "dear sir, thank you kindly for your letter; we shall reply in due course.",
}


def make_tokenizer(out_dir: Path, vocab_size: int = 512) -> None:
    """Train a byte-level BPE tokenizer on a built-in corpus and save it HF-style."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<s>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([_CORPUS] * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    fast.save_pretrained(str(out_dir))


def make_base_model(out_dir: Path, shape: TinyShape = TINY, seed: int = 0,
                    dtype: str = "float32") -> Path:
    """Save a random-weight LlamaForCausalLM plus tokenizer into ``out_dir``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=shape.vocab_size,
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_hidden_layers,
        num_attention_heads=shape.num_attention_heads,
        num_key_value_heads=shape.num_key_value_heads,
        max_position_embeddings=2048,
        bos_token_id=0,
        eos_token_id=1,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).to(getattr(torch, dtype))
    model.save_pretrained(str(out_dir))
    make_tokenizer(out_dir, vocab_size=min(512, shape.vocab_size))
    return out_dir


def _set_adapter_base_name(adapter_dir: Path, base_model_name: str) -> None:
    """Point a saved adapter's ``base_model_name_or_path`` at ``base_model_name``."""
    cfg_path = Path(adapter_dir) / "adapter_config.json"
    data = json.loads(cfg_path.read_text())
    data["base_model_name_or_path"] = base_model_name
    cfg_path.write_text(json.dumps(data, indent=2))


def make_adapter(base_dir: Path, out_dir: Path, seed: int, rank: int = 8,
                 target_modules: tuple[str, ...] = ("q_proj", "v_proj", "o_proj", "down_proj"),
                 scale: float = 0.5, base_model_name: str | None = None) -> Path:
    """Save a LoRA adapter for ``base_dir`` with random (non-zero) A and B matrices.

    PEFT initialises B to zero, which would make every adapter a no-op; random B makes two
    adapters give visibly different outputs.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    out_dir = Path(out_dir)
    model = AutoModelForCausalLM.from_pretrained(str(base_dir))
    cfg = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=list(target_modules),
                     lora_dropout=0.0, task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * scale)
    peft_model.save_pretrained(str(out_dir))
    if base_model_name is not None:
        _set_adapter_base_name(out_dir, base_model_name)
    return out_dir


def make_trained_adapter(base_dir: Path, out_dir: Path, text: str, seed: int = 0, rank: int = 8,
                         steps: int = 150, base_model_name: str | None = None,
                         on_step: Callable[[], None] | None = None) -> Path:
    """Train a LoRA adapter for ``base_dir`` so that greedy generation answers
    ``DEMO_PROMPT`` with ``text`` (then EOS).

    Overfits the single sequence ``DEMO_PROMPT + " " + text + eos`` with AdamW on CPU; the
    loss covers only the answer tokens. The prompt and answer are tokenised separately, so
    the trained token ids are exactly those greedy decoding has to produce after
    ``tokenizer(DEMO_PROMPT)``. Decoding the generated ids gives ``" " + text``.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out_dir = Path(out_dir)
    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(str(base_dir))
    model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    cfg = LoraConfig(r=rank, lora_alpha=2 * rank,
                     target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                     "gate_proj", "up_proj", "down_proj"],
                     lora_dropout=0.0, task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, cfg)

    prompt_ids = tok(DEMO_PROMPT)["input_ids"]
    answer_ids = tok(" " + text)["input_ids"] + [tok.eos_token_id]
    input_ids = torch.tensor([prompt_ids + answer_ids])
    labels = torch.tensor([[-100] * len(prompt_ids) + answer_ids])

    params = [p for p in peft_model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.0)
    peft_model.train()
    for _ in range(steps):
        loss = peft_model(input_ids=input_ids, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if on_step is not None:
            on_step()  # progress, e.g. the demo's bar
    peft_model.eval()
    peft_model.save_pretrained(str(out_dir))
    if base_model_name is not None:
        _set_adapter_base_name(out_dir, base_model_name)
    return out_dir


def make_random_adapter_for_config(config_dir: Path, out_dir: Path, seed: int, rank: int = 16,
                                   target_modules: tuple[str, ...] = ("q_proj", "v_proj"), scale: float = 0.02,
                                   base_model_name: str | None = None, dtype: str = "float16") -> Path:
    """A random LoRA adapter written straight from the base's config.json: no base weights are
    loaded, so adapters for 7B-shaped bases cost milliseconds (GPU benchmarks)."""
    import torch
    from peft import LoraConfig
    from safetensors.torch import save_file
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(str(config_dir))
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    kv = cfg.num_key_value_heads * head_dim
    shapes = {  # module → (out_features, in_features)
        "q_proj": (cfg.num_attention_heads * head_dim, cfg.hidden_size), "k_proj": (kv, cfg.hidden_size),
        "v_proj": (kv, cfg.hidden_size), "o_proj": (cfg.hidden_size, cfg.num_attention_heads * head_dim),
        "gate_proj": (cfg.intermediate_size, cfg.hidden_size), "up_proj": (cfg.intermediate_size, cfg.hidden_size),
        "down_proj": (cfg.hidden_size, cfg.intermediate_size),
    }
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in range(cfg.num_hidden_layers):
        for module in target_modules:
            out_f, in_f = shapes[module]
            group = "self_attn" if module.endswith(("q_proj", "k_proj", "v_proj", "o_proj")) else "mlp"
            key = f"base_model.model.model.layers.{layer}.{group}.{module}"
            tensors[f"{key}.lora_A.weight"] = (torch.randn((rank, in_f), generator=gen) * scale).to(getattr(torch, dtype))
            tensors[f"{key}.lora_B.weight"] = (torch.randn((out_f, rank), generator=gen) * scale).to(getattr(torch, dtype))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out_dir / "adapter_model.safetensors"))
    LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=list(target_modules), lora_dropout=0.0,
               task_type="CAUSAL_LM", base_model_name_or_path=base_model_name or str(config_dir)).save_pretrained(str(out_dir))
    return out_dir
