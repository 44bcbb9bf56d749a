"""Co-batching different adapters of one backbone (a shared runtime): PEFT's mixed-batch LoRA
with one adapter per row. Each request's tokens equal those of its own adapter's unbatched
engine (fp32 on CPU), whatever other adapters share its forward passes."""
from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest
import torch

from slfaas.functions.batching import BatchEngine
from slfaas.functions.engine import BackboneSource, LoraEngine
from slfaas.functions.events import parse_event
from slfaas.functions.runtime_client import AdapterUnavailable
from slfaas.functions.shared import AdapterView, SharedEngine
from slfaas.functions.slot_geometry import DEFAULT_GEOMETRY
from slfaas.functions.slots import WarmupShapes
from slfaas.gpu_node.resources.shared_weights import build_shared_image

EVENTS = [
    {"prompt": "the quick brown fox jumps over the lazy dog", "max_tokens": 14, "temperature": 0, "ignore_eos": True},
    {"prompt": "hi", "max_tokens": 9, "temperature": 0.8, "seed": 3, "ignore_eos": True},
    {"prompt": "dear sir, thank you for your letter", "max_tokens": 11, "temperature": 0, "ignore_eos": True},
]


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@dataclass(frozen=True)
class Kit:
    base: Path
    fd: int
    adapters: dict[str, Path]       # adapter id → its directory


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> Kit:
    from slfaas.testing.tinymodels import make_adapter, make_base_model

    root = tmp_path_factory.mktemp("shared")
    base = make_base_model(root / "base")
    adapters = {
        "a": make_adapter(base, root / "a", seed=1),
        "b": make_adapter(base, root / "b", seed=2),
        # another rank and other modules: rows of it skip the layers it does not adapt
        "c": make_adapter(base, root / "c", seed=3, rank=4, target_modules=("q_proj", "k_proj", "up_proj")),
    }
    return Kit(base, build_shared_image(base).fd, adapters)


def _fetcher(kit: Kit, calls: list[str]):  # type: ignore[no-untyped-def]
    def fetch(adapter_id: str) -> tuple[dict, bytes]:
        calls.append(adapter_id)
        if adapter_id not in kit.adapters:
            raise AdapterUnavailable(adapter_id)
        d = kit.adapters[adapter_id]
        return json.loads((d / "adapter_config.json").read_text()), (d / "adapter_model.safetensors").read_bytes()
    return fetch


def _shared(kit: Kit) -> SharedEngine:
    return SharedEngine(LoraEngine.prewarmed(BackboneSource(fd=kit.fd), kit.base, DEFAULT_GEOMETRY,
                                             WarmupShapes((1, 7), 1)))


def test_each_request_gets_its_own_adapters_tokens_in_mixed_batches(kit: Kit) -> None:
    alone = {}
    for aid, directory in kit.adapters.items():
        own = LoraEngine(BackboneSource(fd=kit.fd), kit.base, directory)
        alone[aid] = [own.generate(parse_event(e)).token_ids for e in EVENTS]
    assert alone["a"][0] != alone["b"][0] != alone["c"][0]      # the adapters make a difference

    calls: list[str] = []
    shared = _shared(kit)
    batched = BatchEngine(shared, 9)
    fetch = _fetcher(kit, calls)
    jobs = [(aid, i) for i in range(len(EVENTS)) for aid in kit.adapters]
    results: dict[tuple[str, int], tuple[int, ...]] = {}
    sizes: dict[tuple[str, int], int] = {}
    loaded = threading.Barrier(len(jobs) + 1)
    held, opened = threading.Event(), threading.Semaphore(0)

    def run(aid: str, i: int) -> None:
        with shared.using(aid, fetch):
            loaded.wait(60)
            held.wait(60)
            stream = AdapterView(batched, aid).stream(parse_event(EVENTS[i]))
            opened.release()
            results[(aid, i)] = tuple(stream)
            sizes[(aid, i)] = stream.stats.batch_size
    threads = [threading.Thread(target=run, args=job) for job in jobs]
    for t in threads:
        t.start()
    loaded.wait(60)      # every adapter loaded
    with shared._lock:   # no forward pass runs until every request is open: they all share passes
        held.set()
        for _ in jobs:
            assert opened.acquire(timeout=60)
    for t in threads:
        t.join(120)
    batched.close()
    for aid, i in jobs:
        assert results[(aid, i)] == alone[aid][i], (aid, i)
    assert max(sizes.values()) == len(jobs)               # rows of all three adapters in one pass
    assert shared._gathered.gathered_calls > 0             # the LoRA layers gathered (not PEFT's loop)
    assert sorted(calls) == ["a", "b", "c"]                # each adapter fetched once
    assert set(shared.loaded()) == {"a", "b", "c"} and shared.adapter_bytes > 0


def test_adapters_beyond_the_limit_are_unloaded_least_recently_used_first_never_in_use(kit: Kit) -> None:
    calls: list[str] = []
    shared = _shared(kit)
    shared.max_adapters = 2
    fetch = _fetcher(kit, calls)
    for aid in ("a", "b", "a", "c"):    # a used again after b: b is the least recently used
        with shared.using(aid, fetch):
            pass
    assert set(shared.loaded()) == {"a", "c"} and calls == ["a", "b", "c"]
    with shared.using("a", fetch), shared.using("c", fetch), shared.using("b", fetch):
        assert set(shared.loaded()) == {"a", "b", "c"}    # all three in use: none unloaded
    assert len(shared.loaded()) == 2
    assert calls == ["a", "b", "c", "b"]
    with pytest.raises(AdapterUnavailable):
        with shared.using("nope", fetch):
            pass
    assert "nope" not in shared.loaded()


def test_gathered_rows_compute_what_peft_s_mixed_batch_loop_computes(kit: Kit) -> None:
    """Rows of three adapters (two ranks, different modules) and an adapter set that changes:
    the gathered layers' logits equal PEFT's own loop over the adapters (fp32), row by row."""
    from transformers import DynamicCache

    calls: list[str] = []
    shared = _shared(kit)
    fetch = _fetcher(kit, calls)
    tok = shared.tokenizer
    rows = [tok(p).input_ids for p in ("the quick brown fox jumps", "dear sir, thank you", "hello there my friend")]
    ids = torch.tensor([r[:min(map(len, rows))] for r in rows])
    mask = torch.ones_like(ids)

    def both(adapters: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        names = [f"a_{a}" for a in adapters]
        with torch.inference_mode():
            before = shared._gathered.gathered_calls
            gathered = shared.forward(ids, mask, DynamicCache(), adapter_names=adapters).logits
            assert shared._gathered.gathered_calls > before
            loop = shared._peft(input_ids=ids, attention_mask=mask, use_cache=False, logits_to_keep=1,
                                adapter_names=names).logits         # no gathered pass open: PEFT's own
        return gathered, loop

    with shared.using("a", fetch), shared.using("c", fetch):
        gathered, loop = both(["c", "a", "c"])
        assert torch.allclose(gathered, loop, atol=1e-5, rtol=0)
        with shared.using("b", fetch):                   # a third adapter: restacked
            gathered, loop = both(["b", "c", "a"])
            assert torch.allclose(gathered, loop, atol=1e-5, rtol=0)
            assert not torch.allclose(gathered[0], gathered[1], atol=1e-3)   # the rows' adapters differ


def test_evicting_the_only_adapter_of_some_layers_keeps_gathering_for_the_rest(kit: Kit) -> None:
    """``c`` alone adapts k_proj and up_proj: once it is evicted those layers hold no adapter,
    and loading another must still work, gathered, equal to PEFT's loop."""
    from transformers import DynamicCache

    shared = _shared(kit)
    shared.max_adapters = 1
    fetch = _fetcher(kit, [])
    with shared.using("c", fetch):
        pass
    with shared.using("a", fetch):                    # loads a; c is evicted as it ends
        pass
    with shared.using("a", fetch):
        assert shared.loaded() == ("a",) and shared._gathered.active
        ids = torch.tensor([shared.tokenizer("the quick brown fox").input_ids] * 2)
        mask = torch.ones_like(ids)
        with torch.inference_mode():
            before = shared._gathered.gathered_calls
            gathered = shared.forward(ids, mask, DynamicCache(), adapter_names=["a", "a"]).logits
            assert shared._gathered.gathered_calls > before
            loop = shared._peft(input_ids=ids, attention_mask=mask, use_cache=False, logits_to_keep=1,
                                adapter_names=["a_a", "a_a"]).logits
    assert torch.allclose(gathered, loop, atol=1e-5, rtol=0)


def test_what_cannot_be_stacked_exactly_is_left_to_peft(kit: Kit) -> None:
    """A bias on B, or a row naming an adapter with nothing stacked (PEFT's ``__base__``):
    PEFT's loop runs, so the result is PEFT's."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from slfaas.functions.gathered_lora import GatheredLora

    config = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    plain = get_peft_model(AutoModelForCausalLM.from_pretrained(str(kit.base)), config, adapter_name="x").eval()
    gathered = GatheredLora(plain)
    ids = torch.tensor([[5, 6, 7, 8]] * 2)
    with torch.inference_mode():
        loop = plain(input_ids=ids, adapter_names=["x", "__base__"]).logits
        with gathered.rows(["x", "__base__"], ids.device):
            mixed = plain(input_ids=ids, adapter_names=["x", "__base__"]).logits
    assert gathered.active and gathered.gathered_calls == 0 and torch.equal(mixed, loop)

    biased = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False, lora_bias=True)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(str(kit.base)), biased, adapter_name="y").eval()
    assert not GatheredLora(model).active
