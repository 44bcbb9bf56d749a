"""The shared runtime of a backbone (``SLFAAS_SHARED_EXECUTION=1``): several functions'
adapters in one process, their requests batched together, each row with its own adapter.

Functions opt into this (it is the one exception to one runtime per function): the platform
starts one such runtime per (backbone, device) and hands it the invocations of every function
of that backbone in shared execution; each delivery names the adapter it runs with (the node
sets it; the event cannot). The runtime fetches an adapter from its node the first time it
sees it (``RuntimeClient.adapter``: the node serves only adapters of invocations it handed
this instance), loads it into one PEFT model beside the others under its own name, and
every forward pass gives each row its adapter (``adapter_names=[...]``): rows of one adapter
compute x·W + x·A·B·s with that adapter's A, B and s, as that function's own runtime would,
so its outputs equal its unbatched ones. The LoRA layers gather each row's A and B from
weights stacked per set of loaded adapters (``gathered_lora``) rather than run PEFT's loop
over the adapters present. Only the built-in handler runs here (no function's code). Adapters not in use are
unloaded, least recently used first, beyond ``max_adapters``.
"""
from __future__ import annotations

import json
import logging
import shutil
import tempfile
import threading
from collections import OrderedDict
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Callable, Iterator

from slfaas.functions.engine import BackboneSource, Generation, LoraEngine
from slfaas.functions.events import GenerationRequest
from slfaas.functions.runtime_client import AdapterUnavailable

__all__ = ["AdapterUnavailable", "AdapterView", "SharedEngine"]

log = logging.getLogger(__name__)

DEFAULT_MAX_ADAPTERS = 64
Fetch = Callable[[str], tuple[dict, bytes]]   # adapter id → (adapter_config.json, safetensors bytes)


class SharedEngine:
    """The ``LoraEngine`` surface ``BatchEngine`` drives, over a PEFT model holding several
    named adapters; ``forward`` takes one adapter name per row."""

    def __init__(self, engine: LoraEngine, max_adapters: int = DEFAULT_MAX_ADAPTERS):
        """``engine``: a pre-warmed runtime (backbone attached, kernels warm); its LoRA slots
        are taken out: adapters come and go here through PEFT."""
        if engine.slots is not None:
            engine.slots.remove()
            engine.slots = None
        self.base = engine
        self.max_adapters = max_adapters
        self._peft: Any = None
        self._gathered: Any = None                     # GatheredLora over ``_peft``, restacked as adapters change
        self._lock = threading.RLock()                 # loading and unloading never overlap a forward
        self._loaded: OrderedDict[str, int] = OrderedDict()   # adapter id → bytes, least recently used first
        self._in_use: dict[str, int] = {}

    @classmethod
    def from_env(cls, base_model_dir: Path, prewarmed: LoraEngine | None = None) -> "SharedEngine":
        from slfaas.functions.slot_geometry import DEFAULT_GEOMETRY
        from slfaas.functions.slots import WarmupShapes

        engine = prewarmed or LoraEngine.prewarmed(BackboneSource.from_env(), base_model_dir, DEFAULT_GEOMETRY,
                                                   WarmupShapes((1, 16), 1))
        return cls(engine)

    # what BatchEngine, textstream and the init report use
    @property
    def device(self) -> Any:
        return self.base.device

    @property
    def _torch(self) -> Any:
        return self.base._torch

    @property
    def model_base(self) -> Any:
        return self.base.model_base

    @property
    def model(self) -> Any:
        return self._peft if self._peft is not None else self.base.model_base

    @property
    def tokenizer(self) -> Any:
        return self.base.tokenizer

    @property
    def eos_ids(self) -> frozenset[int]:
        return self.base.eos_ids

    @property
    def timings(self) -> Any:
        return self.base.timings

    @property
    def adapter_bytes(self) -> int:
        with self._lock:
            return sum(self._loaded.values())

    def encode(self, req: GenerationRequest) -> Any:
        return self.base.encode(req)

    def generator_for(self, req: GenerationRequest) -> Any:
        return self.base.generator_for(req)

    def pick(self, logits: Any, req: GenerationRequest, generator: Any) -> Any:
        return self.base.pick(logits, req, generator)

    def busy(self) -> Any:
        return self.base.busy()

    def forward(self, ids: Any, mask: Any, cache: Any, position_ids: Any = None,
                adapter_names: list[str] | None = None) -> Any:
        extra: dict[str, Any] = {} if position_ids is None else {"position_ids": position_ids}
        with self._lock:
            if self._peft is None or adapter_names is None:
                return self.model(input_ids=ids, attention_mask=mask, past_key_values=cache, use_cache=True,
                                  logits_to_keep=1, **extra)
            names = [_name(a) for a in adapter_names]
            with self._gathered.rows(names, self.device) if self._gathered is not None else nullcontext():
                return self._peft(input_ids=ids, attention_mask=mask, past_key_values=cache, use_cache=True,
                                  logits_to_keep=1, adapter_names=names, **extra)

    # adapters
    def loaded(self) -> tuple[str, ...]:
        with self._lock:
            return tuple(self._loaded)

    @contextmanager
    def using(self, adapter_id: str, fetch: Fetch) -> Iterator[None]:
        """Hold ``adapter_id`` loaded (fetching it first if need be) while the block runs."""
        with self._lock:
            self._ensure(adapter_id, fetch)
            self._in_use[adapter_id] = self._in_use.get(adapter_id, 0) + 1
        try:
            yield
        finally:
            with self._lock:
                self._in_use[adapter_id] -= 1
                if not self._in_use[adapter_id]:
                    del self._in_use[adapter_id]
                self._unload_beyond(self.max_adapters)

    def _ensure(self, adapter_id: str, fetch: Fetch) -> None:
        """Caller holds ``_lock``."""
        if adapter_id in self._loaded:
            self._loaded.move_to_end(adapter_id)
            return
        config, weights = fetch(adapter_id)
        directory = Path(tempfile.mkdtemp(prefix="slfaas-adapter-"))
        try:
            (directory / "adapter_config.json").write_text(json.dumps(config))
            (directory / "adapter_model.safetensors").write_bytes(weights)
            if self._peft is None:
                from peft import PeftModel
                self._peft = PeftModel.from_pretrained(self.base.model_base, str(directory),
                                                       adapter_name=_name(adapter_id), is_trainable=False,
                                                       torch_device=str(self.device)).eval()
            else:
                self._peft.load_adapter(str(directory), adapter_name=_name(adapter_id), is_trainable=False,
                                        torch_device=str(self.device))
        finally:
            shutil.rmtree(directory, ignore_errors=True)
        self._restack()
        self._loaded[adapter_id] = sum(p.numel() * p.element_size() for n, p in self._peft.named_parameters()
                                       if f".{_name(adapter_id)}." in n)
        log.info("adapter %s loaded (%d bytes; %d adapters held)", adapter_id, self._loaded[adapter_id],
                 len(self._loaded))

    def _unload_beyond(self, limit: int) -> None:
        """Caller holds ``_lock``. PEFT keeps at least one adapter: the last one stays."""
        deleted = False
        for adapter_id in [a for a in self._loaded if a not in self._in_use]:
            if len(self._loaded) <= max(1, limit):
                break
            self._peft.delete_adapter(_name(adapter_id))
            del self._loaded[adapter_id]
            deleted = True
        if deleted:
            self._restack()

    def _restack(self) -> None:
        """Caller holds ``_lock``: the gathered layers' stacks follow the adapters loaded."""
        from slfaas.functions.gathered_lora import GatheredLora

        try:
            if self._gathered is None:
                self._gathered = GatheredLora(self._peft)
            else:
                self._gathered.refresh()
        except Exception:   # never fail a load for it: PEFT's own loop serves the rows
            log.exception("could not stack the adapters for gathered LoRA: PEFT's mixed-batch loop runs")


def _name(adapter_id: str) -> str:
    """PEFT's name of an adapter: a module key (no dots), never PEFT's own ``__base__``."""
    return "a_" + "".join(c if c.isalnum() else "_" for c in adapter_id)


class AdapterView:
    """What one invocation's handler sees as its engine: the batching engine, every request
    it opens tagged with the invocation's adapter."""

    def __init__(self, batched: Any, adapter_id: str):
        self._batched = batched
        self.adapter_id = adapter_id

    @property
    def model(self) -> Any:
        return self._batched.model

    @property
    def tokenizer(self) -> Any:
        return self._batched.tokenizer

    @property
    def eos_ids(self) -> frozenset[int]:
        return self._batched.eos_ids

    def busy(self) -> Any:
        return self._batched.busy()

    def stream(self, req: GenerationRequest) -> Any:
        return self._batched.open([req], adapter=self.adapter_id)[0]

    def generate(self, req: GenerationRequest) -> Generation:
        return self._batched._collect(req, self.stream(req))
