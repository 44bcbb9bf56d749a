"""The LoRA engine inside an instance: the node's backbone borrowed zero-copy (or, in a baseline
node without sharing, a private copy: ``backbone_source``), this function's adapter on top,
unmerged (x·W + x·A·B·s), so the shared weights are never written."""
from __future__ import annotations

import logging
import math
import os
import threading
import time
from contextlib import closing, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from slfaas.functions.adapter_tensors import AdapterSource
from slfaas.functions.events import GenerationRequest
from slfaas.functions.slot_geometry import DEFAULT_GEOMETRY, SlotGeometry
from slfaas.functions.backbone_source import BackboneSource, build_borrowed_model
from slfaas.runtime_contract import (ENV_CUDNN_SDPA, ENV_GPU_TRIM_IDLE_S, ENV_PREWARM_KEEP_SCRATCH, ENV_RUNTIME_CPU_THREADS,
                                     GPU_RUNTIME_CPU_THREADS)

if TYPE_CHECKING:
    from slfaas.functions.slots import LoraSlots, Specialisation, WarmupShapes

log = logging.getLogger(__name__)


def trim_host_heap() -> None:
    """Hand freed host heap back to the OS. Warm-up forwards free hundreds of MB of activations
    that glibc keeps in its arenas; every idle instance would hold them as private memory."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):   # not glibc (musl, macOS): nothing to trim with
        pass


__all__ = ["AttachTimings", "BackboneSource", "Generation", "LoraEngine", "build_borrowed_model"]


@dataclass(frozen=True)
class Generation:
    text: str
    finish_reason: str          # "stop" (EOS or a stop string) or "length"
    prompt_tokens: int
    completion_tokens: int
    ttft_ms: float              # tokenize + prefill + first token, measured in the instance
    prefill_ms: float           # the prefill forward alone (device-synchronised)
    token_ids: tuple[int, ...] = ()
    device_ms: float = 0.0      # device time of the generation (CUDA events; wall on CPU): billed
    batch_size: int = 1         # most requests in one forward pass with it (slfaas.functions.batching)
    batch_device_ms: float = 0.0   # device time of those passes whole (device_ms is its token share)


@dataclass(frozen=True)
class AttachTimings:
    imports_s: float
    backbone_attach_s: float
    adapter_load_s: float
    device_init_s: float = 0.0   # CUDA context creation (0 on CPU)


class LoraEngine:
    """With ``adapter_dir`` only: a function's engine, its adapter loaded by PEFT. With
    ``slots``: a pre-warmed runtime (empty LoRA slots, every warm-up shape run), made one
    function's by ``specialise`` (also done here when ``adapter_dir`` is given too)."""

    def __init__(self, backbone: BackboneSource, base_model_dir: Path, adapter_dir: Path | None = None, *,
                 slots: "SlotGeometry | None" = None, warmup: "WarmupShapes | None" = None,
                 pause: "Callable[[], None] | None" = None):
        if adapter_dir is None and slots is None:
            raise ValueError("an engine needs an adapter, slots, or both")
        t0 = time.perf_counter()
        import torch
        from peft import PeftModel
        from transformers import AutoTokenizer

        from slfaas.functions.slots import LoraSlots, Specialisation, WarmupShapes
        t1 = time.perf_counter()
        self._torch = torch
        self.device = torch.device(backbone.device)
        if self.device.type == "cuda":
            # torch's default is a thread per core in every runtime; a GPU runtime's CPU work is
            # small, and dozens of runtimes share the host's cores
            torch.set_num_threads(max(1, int(os.environ.get(ENV_RUNTIME_CPU_THREADS, GPU_RUNTIME_CPU_THREADS))))
            if os.environ.get(ENV_CUDNN_SDPA, "0") != "1":
                # cuDNN's attention builds an execution plan for every new sequence length, so a
                # runtime's first generation at lengths it has not run pays for each of them
                # (on the H200 its decode steps took twice as long as a later generation's);
                # the flash and memory-efficient kernels need no such set-up
                torch.backends.cuda.enable_cudnn_sdp(False)
            torch.cuda.set_device(self.device)
            torch.zeros(1, device=self.device)  # creates the CUDA context now: timed as device init
        t_dev = time.perf_counter()
        self.model_base, self._backbone_keepalive = backbone.model(base_model_dir)
        self.tokenizer = AutoTokenizer.from_pretrained(str(base_model_dir))
        t2 = time.perf_counter()
        self.slots: LoraSlots | None = None
        self.specialisation: "Specialisation | None" = None
        if slots is not None:
            self.slots = LoraSlots(self.model_base, slots)
            self.model = self.model_base   # the slot modules sit inside it
        else:
            # The adapter is this instance's own memory, created on the backbone's device.
            self.model = PeftModel.from_pretrained(self.model_base, str(adapter_dir), is_trainable=False,
                                                   torch_device=str(self.device))
        self.model.eval()
        eos = self.model_base.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        self._eos_ids = set(eos if isinstance(eos, list) else ([] if eos is None else [eos]))
        self.last_prefill_ms = 0.0
        self.last_device_ms = 0.0
        self.device_ms_total = 0.0   # all generations so far: the runtime reports each invocation's delta
        self._activity = threading.Lock()  # held while generating: trimming waits for idle
        self._busy = False
        self._last_active = time.monotonic()
        self._trim_idle_s = _trim_idle_s(os.environ.get(ENV_GPU_TRIM_IDLE_S))
        self._keep_warmup_scratch = slots is not None and os.environ.get(ENV_PREWARM_KEEP_SCRATCH, "1") != "0"
        if self.device.type == "cuda" and self._trim_idle_s >= 0:
            threading.Thread(target=self._trim_when_idle, daemon=True, name="gpu-trim").start()
        log.info("model ready on %s: attention=%s, backbone dtype=%s", self.device,
                 getattr(self.model_base.config, "_attn_implementation", "?"), self.model_base.dtype)
        t3 = time.perf_counter()
        self.timings = AttachTimings(t1 - t0, t2 - t_dev, t3 - t2, t_dev - t1)
        self.adapter_bytes = self._lora_bytes()
        self.prewarm_timings: AttachTimings | None = None
        self.warmup_s = 0.0
        if self.slots is None:
            self._warm_up()
            return
        self._warm_up_shapes(warmup or WarmupShapes(), self._pausing(pause))
        self.warmup_s = time.perf_counter() - t3
        self.prewarm_timings = self.timings   # paid before any function needed this runtime
        if adapter_dir is not None:   # a fresh process with slots: its own cold start pays for all of it
            spec = self.specialise(AdapterSource.from_dir(adapter_dir))
            self.timings = replace(self.prewarm_timings, adapter_load_s=self.prewarm_timings.adapter_load_s + spec.seconds)

    @classmethod
    def prewarmed(cls, backbone: BackboneSource, base_model_dir: Path, geometry: "SlotGeometry | None" = None,
                  warmup: "WarmupShapes | None" = None, pause: "Callable[[], None] | None" = None) -> "LoraEngine":
        """A runtime for no function yet: backbone attached, empty slots, warm-up shapes run
        (``pause()`` before each warm-up forward: it returns once the device is free to use)."""
        return cls(backbone, base_model_dir, None, slots=geometry or DEFAULT_GEOMETRY, warmup=warmup, pause=pause)

    def specialise(self, source: AdapterSource) -> "Specialisation":
        """Make this pre-warmed runtime ``source``'s: copy the adapter into the slots, or, when
        it fits none, put the plain layers back and load it with PEFT. Once only: a runtime
        belongs to its function from then on. If PEFT's loader fails too, the runtime is
        unusable (its slots are gone) and must be discarded, like any failed init."""
        if self.specialisation is not None or self.slots is None:
            raise RuntimeError("only a pre-warmed runtime that no function owns yet can be specialised")
        from slfaas.functions.slots import AdapterDoesNotFit, Specialisation

        with self._activity:   # its idle time starts now: the trim must not free the kept scratch under the first request
            self._last_active = time.monotonic()
        t0 = time.perf_counter()
        try:
            self.slots.load(source)
            self.slots.release_mirror()
            if self.device.type == "cuda":
                self._torch.cuda.synchronize(self.device)
            path, reasons = "slots", ()
        except AdapterDoesNotFit as exc:
            log.info("adapter fits no slot (%s): loading it with PEFT", exc)
            self.slots.remove()
            self.slots = None
            self.model = self._load_with_peft(source)
            self._warm_up()
            path, reasons = "peft", exc.reasons
        seconds = time.perf_counter() - t0
        self.adapter_bytes = self._lora_bytes()
        self.timings = AttachTimings(0.0, 0.0, seconds, 0.0)
        self.specialisation = Specialisation(path, seconds, self.adapter_bytes, reasons)
        return self.specialisation

    def _load_with_peft(self, source: AdapterSource) -> Any:
        from peft import PeftModel

        with source.directory_for_peft() as directory:
            return PeftModel.from_pretrained(self.model_base, str(directory), is_trainable=False,
                                             torch_device=str(self.device)).eval()

    def _lora_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for n, p in self.model.named_parameters() if "lora_" in n)

    def _warm_up(self) -> None:
        """One tiny forward so the first real request does not pay for lazy kernel setup."""
        with self._torch.inference_mode():
            ids = self._torch.tensor([[self.tokenizer.eos_token_id or 0]], device=self.device)
            self.model(input_ids=ids)
        if self.device.type == "cuda":
            self._torch.cuda.synchronize()
            self._torch.cuda.empty_cache()  # hand back warm-up scratch: GPU memory is per-instance cost
        trim_host_heap()

    def _pausing(self, pause: "Callable[[], None] | None") -> "Callable[[], None]":
        """``pause`` after the device has finished the forwards queued so far: a paused runtime
        must not keep running kernels it queued before (forwards do not wait for the GPU)."""
        if pause is None:
            return lambda: None
        if self.device.type != "cuda":
            return pause

        def synced() -> None:
            self._torch.cuda.synchronize(self.device)
            pause()
        return synced

    def _warm_up_shapes(self, shapes: "WarmupShapes", pause: "Callable[[], None]") -> None:
        """The forwards a generation makes (prefill, then decode with the cache), at every
        warm-up length, through the (empty) slots; plus both token pickers."""
        torch = self._torch
        from transformers import DynamicCache

        config = self.model_base.config
        limit = int(getattr(config, "max_position_embeddings", 0) or 1 << 30) - shapes.decode_steps
        generator = torch.Generator(device=self.device).manual_seed(0)
        with torch.inference_mode():
            for n in sorted({max(1, min(n, limit)) for n in shapes.prefill_tokens}):
                ids = (torch.arange(n, device=self.device) % config.vocab_size).view(1, n)
                mask, cache = torch.ones_like(ids), DynamicCache()
                pause()
                out = self.forward(ids, mask, cache)
                for _ in range(shapes.decode_steps):
                    pause()
                    token = self.pick(out.logits[:, -1, :], GenerationRequest("", temperature=0), None)
                    mask = torch.cat([mask, mask.new_ones((1, 1))], dim=1)
                    out = self.forward(token.view(1, 1), mask, cache)
            self.pick(out.logits[:, -1, :], GenerationRequest("", temperature=1.0, top_p=0.9), generator)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            if not self._keep_warmup_scratch:
                torch.cuda.empty_cache()
        trim_host_heap()

    def forward(self, ids: Any, mask: Any, cache: Any, position_ids: Any = None) -> Any:
        """One forward of a generation (prefill or decode step): logits of the last position.
        ``position_ids``: given for left-padded batches (``slfaas.functions.batching``)."""
        extra = {} if position_ids is None else {"position_ids": position_ids}
        return self.model(input_ids=ids, attention_mask=mask, past_key_values=cache, use_cache=True,
                          logits_to_keep=1, **extra)

    def stream(self, req: GenerationRequest) -> Iterator[int]:
        """Yield new token ids one by one: a prefill, then one decode step per token.

        The same forward passes as ``generate()`` under greedy decoding (full prompt with an
        empty DynamicCache and logits for the last position only, then one token at a time),
        so greedy outputs equal PEFT's ``generate`` token for token; written out so TTFT is
        the prefill itself and tokens can be streamed as they come."""
        torch = self._torch
        from transformers import DynamicCache

        ids = self.encode(req).to(self.device)
        self.last_prompt_tokens = int(ids.shape[1])
        generator = self.generator_for(req)
        cache = DynamicCache()
        mask = torch.ones_like(ids)
        # Billing meters device time: CUDA events on the device's own clock (first kernel to
        # last), wall time on CPU. Recorded in ``finally``: a consumer may stop early.
        cuda = self.device.type == "cuda"
        t_dev = time.perf_counter()
        ev_start = ev_end = None
        if cuda:
            ev_start, ev_end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            ev_start.record()
        try:
            yield from self._decode(ids, mask, cache, req, generator)
        finally:
            if ev_start is not None and ev_end is not None:
                ev_end.record()
                ev_end.synchronize()
                self.last_device_ms = float(ev_start.elapsed_time(ev_end))
            else:
                self.last_device_ms = (time.perf_counter() - t_dev) * 1000
            self.device_ms_total += self.last_device_ms

    def encode(self, req: GenerationRequest) -> Any:
        """The prompt's token ids, shape (1, n), on the CPU: the chat template for messages,
        special tokens otherwise; an empty prompt is one BOS token."""
        if req.messages:
            from slfaas.functions.chat import chat_prompt
            prompt, templated = chat_prompt(self.tokenizer, req.messages)
        else:
            prompt, templated = req.prompt, False
        ids = self.tokenizer(prompt, return_tensors="pt", add_special_tokens=not templated)["input_ids"]
        if ids.shape[1] == 0:
            bos = self.tokenizer.bos_token_id if self.tokenizer.bos_token_id is not None else 0
            ids = self._torch.tensor([[bos]])
        return ids

    def generator_for(self, req: GenerationRequest) -> Any:
        """The request's own random generator (None when greedy), seeded by its ``seed`` (or
        randomly): a request draws the same numbers whether it runs alone or in a batch."""
        if req.greedy:
            return None
        generator = self._torch.Generator(device=self.device)
        generator.manual_seed(req.seed if req.seed is not None else int.from_bytes(os.urandom(4), "little"))
        return generator

    def _decode(self, ids: Any, mask: Any, cache: Any, req: GenerationRequest, generator: Any) -> Iterator[int]:
        torch = self._torch
        with torch.inference_mode():
            t_prefill = time.perf_counter()
            out = self.forward(ids, mask, cache)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.last_prefill_ms = (time.perf_counter() - t_prefill) * 1000
            for step in range(req.max_tokens):
                token = self.pick(out.logits[:, -1, :], req, generator)
                token_id = int(token.item())  # synchronises the device: the token really exists
                yield token_id
                if (token_id in self._eos_ids and not req.ignore_eos) or step == req.max_tokens - 1:
                    return  # no forward pass for a token nobody will read
                mask = torch.cat([mask, mask.new_ones((1, 1))], dim=1)
                out = self.forward(token.view(1, 1), mask, cache)

    def pick(self, logits: Any, req: GenerationRequest, generator: Any) -> Any:
        torch = self._torch
        if req.greedy:
            return logits.argmax(dim=-1)
        probs = torch.softmax(logits.float() / req.temperature, dim=-1)
        if req.top_p < 1.0:
            sorted_p, order = probs.sort(dim=-1, descending=True)
            keep = sorted_p.cumsum(dim=-1) - sorted_p < req.top_p  # always keeps the top token
            sorted_p = sorted_p * keep
            choice = torch.multinomial(sorted_p / sorted_p.sum(dim=-1, keepdim=True), 1, generator=generator)
            return order.gather(-1, choice).view(-1)
        return torch.multinomial(probs, 1, generator=generator).view(-1)

    def generate(self, req: GenerationRequest) -> Generation:
        with self.busy():
            return self._generate(req)

    @contextmanager
    def busy(self) -> Iterator[None]:
        """Mark a generation in progress (idle GPU trimming waits for its end)."""
        with self._activity:
            self._busy = True
        try:
            yield
        finally:
            with self._activity:
                self._busy = False
                self._last_active = time.monotonic()

    @property
    def eos_ids(self) -> frozenset[int]:
        return frozenset(self._eos_ids)

    def _generate(self, req: GenerationRequest) -> Generation:
        t0 = time.perf_counter()
        first_ts: float | None = None
        new_ids: list[int] = []
        finish = "length"
        text = ""
        with closing(self.stream(req)) as tokens:  # closed on break: ends the device-time meter
            for token_id in tokens:
                if first_ts is None:
                    first_ts = time.perf_counter()
                new_ids.append(token_id)
                if token_id in self._eos_ids and not req.ignore_eos:
                    finish = "stop"
                    break
                if req.stop:
                    text = self.tokenizer.decode(new_ids, skip_special_tokens=True)
                    if any(s in text for s in req.stop):
                        finish = "stop"
                        break
        text = self.tokenizer.decode(new_ids, skip_special_tokens=True)
        for s in req.stop:
            cut = text.find(s)
            if cut != -1:
                text, finish = text[:cut], "stop"
        ttft_ms = ((first_ts or time.perf_counter()) - t0) * 1000
        return Generation(text, finish, self.last_prompt_tokens, len(new_ids), ttft_ms, self.last_prefill_ms,
                          tuple(new_ids), self.last_device_ms, 1, self.last_device_ms)

    def _awaiting_owner(self) -> bool:
        """Pre-warmed with its slots and no function yet (a shared runtime, or one that fell
        back to PEFT, has no slots: it trims like any instance)."""
        return self._keep_warmup_scratch and self.slots is not None and self.specialisation is None

    def _trim_when_idle(self) -> None:
        """Give freed KV cache and activations back to the device once the instance has been
        idle for SLFAAS_GPU_TRIM_IDLE_S: idle instances' GPU memory decides how many functions
        fit on a GPU, while a busy one keeps its scratch, since re-allocating it costs every
        request milliseconds of driver calls (measured ~10 ms for a 512-token prefill)."""
        torch = self._torch
        while True:
            time.sleep(self._trim_idle_s / 4)
            with self._activity:
                idle = not self._busy and time.monotonic() - self._last_active > self._trim_idle_s
                if self._awaiting_owner():
                    continue   # pre-warmed for a cold start: its first prefill reuses this scratch
                if idle and torch.cuda.memory_reserved(self.device) > torch.cuda.memory_allocated(self.device):
                    torch.cuda.empty_cache()


MIN_TRIM_IDLE_S = 0.05


def _trim_idle_s(value: str | None, default_s: float = 1.0) -> float:
    """SLFAAS_GPU_TRIM_IDLE_S as the trim thread can use it: unset or unreadable is the default,
    negative turns trimming off, anything else is at least MIN_TRIM_IDLE_S (0 would spin)."""
    try:
        seconds = float(value) if value is not None else default_s
    except ValueError:
        log.warning("%s=%r is not a number of seconds: using %.1f", ENV_GPU_TRIM_IDLE_S, value, default_s)
        return default_s
    if math.isnan(seconds):
        return default_s
    if math.isinf(seconds):
        return -1.0   # never idle long enough: no trimming
    return seconds if seconds < 0 else max(MIN_TRIM_IDLE_S, seconds)
