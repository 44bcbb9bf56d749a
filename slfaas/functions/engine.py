"""The LoRA engine inside an instance: the node's backbone borrowed zero-copy, this function's
adapter on top, unmerged (x·W + x·A·B·s), so the shared weights are never written."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slfaas.functions.events import GenerationRequest

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Generation:
    text: str
    finish_reason: str          # "stop" (EOS or a stop string) or "length"
    prompt_tokens: int
    completion_tokens: int
    ttft_ms: float              # prefill + first token, measured in the instance


@dataclass(frozen=True)
class AttachTimings:
    imports_s: float
    backbone_attach_s: float
    adapter_load_s: float


def build_borrowed_model(backbone_fd: int, base_model_dir: Path) -> tuple[Any, Any]:
    """Skeleton on ``meta``, then every parameter assigned a view of the read-only mapping.

    Returns (model, mapping); the mapping must stay alive as long as the model."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    from slfaas.gpu_node.shared_weights import iter_tensors, map_image

    config = AutoConfig.from_pretrained(str(base_model_dir))
    with init_empty_weights(include_buffers=False):  # buffers (rotary tables) stay real
        model = AutoModelForCausalLM.from_config(config)
    mapping = map_image(backbone_fd)
    state = dict(iter_tensors(mapping))
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    model.tie_weights()
    still_meta = [n for n, p in model.named_parameters() if p.is_meta]
    if still_meta:
        raise RuntimeError(f"backbone image lacks parameters: {still_meta[:5]}")
    if unexpected:
        log.warning("backbone image has tensors the model does not use: %s", unexpected[:5])
    del missing
    model.eval()
    model.requires_grad_(False)
    return model, mapping


class LoraEngine:
    def __init__(self, backbone_fd: int, base_model_dir: Path, adapter_dir: Path):
        t0 = time.perf_counter()
        import torch
        from peft import PeftModel
        from transformers import AutoTokenizer

        t1 = time.perf_counter()
        self._torch = torch
        self.model_base, self._mapping = build_borrowed_model(backbone_fd, base_model_dir)
        t2 = time.perf_counter()
        self.model = PeftModel.from_pretrained(self.model_base, str(adapter_dir), is_trainable=False)
        self.model.eval()
        self.tokenizer = AutoTokenizer.from_pretrained(str(base_model_dir))
        t3 = time.perf_counter()
        self.timings = AttachTimings(t1 - t0, t2 - t1, t3 - t2)
        self._warm_up()

    def _warm_up(self) -> None:
        """One tiny forward so the first real request does not pay for lazy kernel setup."""
        with self._torch.inference_mode():
            ids = self._torch.tensor([[self.tokenizer.eos_token_id or 0]])
            self.model(input_ids=ids)

    def generate(self, req: GenerationRequest) -> Generation:
        torch = self._torch
        from transformers import StoppingCriteria, StoppingCriteriaList
        from transformers.generation.streamers import BaseStreamer

        enc = self.tokenizer(req.prompt, return_tensors="pt")
        prompt_len = int(enc["input_ids"].shape[1])
        if prompt_len == 0:
            bos = self.tokenizer.bos_token_id if self.tokenizer.bos_token_id is not None else 0
            enc = {"input_ids": torch.tensor([[bos]]), "attention_mask": torch.tensor([[1]])}
            prompt_len = 1
        tokenizer = self.tokenizer

        class _FirstToken(BaseStreamer):
            """generate() calls put() once with the prompt, then once per new token."""

            def __init__(self) -> None:
                self.calls = 0
                self.first_ts: float | None = None

            def put(self, value: Any) -> None:
                self.calls += 1
                if self.calls == 2 and self.first_ts is None:
                    self.first_ts = time.perf_counter()

            def end(self) -> None:
                pass

        class _StopStrings(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                text = tokenizer.decode(input_ids[0, prompt_len:], skip_special_tokens=True)
                hit = any(s in text for s in req.stop)
                return torch.full((input_ids.shape[0],), hit, dtype=torch.bool)

        streamer = _FirstToken()
        kwargs: dict[str, Any] = dict(
            max_new_tokens=req.max_tokens, streamer=streamer,
            pad_token_id=self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None
            else self.tokenizer.eos_token_id,
        )
        if req.greedy:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            kwargs.update(do_sample=True, temperature=req.temperature, top_p=req.top_p, top_k=0)
            if req.seed is not None:
                torch.manual_seed(req.seed)
        if req.stop:
            kwargs["stopping_criteria"] = StoppingCriteriaList([_StopStrings()])
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = self.model.generate(**enc, **kwargs)
        new_ids = out[0, prompt_len:].tolist()
        eos = self.tokenizer.eos_token_id
        finish = "length"
        if eos is not None and new_ids and new_ids[-1] == eos:
            finish = "stop"
        text = self.tokenizer.decode(new_ids, skip_special_tokens=True)
        for s in req.stop:
            cut = text.find(s)
            if cut != -1:
                text, finish = text[:cut], "stop"
        ttft_ms = ((streamer.first_ts or time.perf_counter()) - t0) * 1000
        return Generation(text, finish, prompt_len, len(new_ids), ttft_ms)
