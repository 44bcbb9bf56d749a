"""Continuous batching inside an instance (``BatchEngine``) on a real tiny model, fp32 on CPU:
every request's tokens equal its unbatched ones (``LoraEngine``), whatever shares its forward
passes; requests join and leave between decode steps; device time is split by token share."""
from __future__ import annotations

import json
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest
import torch

from slfaas.functions.batch_cache import supports_padding
from slfaas.functions.batching import BatchEngine
from slfaas.functions.engine import BackboneSource, Generation, LoraEngine
from slfaas.functions.events import GenerationRequest, parse_event
from slfaas.gpu_node.resources.shared_weights import build_shared_image

# different prompt lengths (an empty one is one BOS), greedy and seeded sampling, chat
EVENTS = [
    {"prompt": "the quick brown fox jumps over the lazy dog", "max_tokens": 20, "temperature": 0},
    {"prompt": "hi", "max_tokens": 9, "temperature": 0.8, "seed": 3},
    {"prompt": "ahoy matey, the sea is wide and the rum is gone! arr, hoist the sails", "max_tokens": 30,
     "temperature": 0.9, "top_p": 0.8, "seed": 5, "ignore_eos": True},
    {"prompt": "", "max_tokens": 12, "temperature": 0},
    {"prompt": "dear sir", "max_tokens": 25, "temperature": 0, "ignore_eos": True},
    {"messages": [{"role": "user", "content": "hello world"}], "max_tokens": 1, "temperature": 0},
    {"prompt": "low rank adapters", "max_tokens": 17, "temperature": 1.3, "seed": 11},
]


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Tiny matrices: a second OpenMP thread only spins against the machine's other work."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@dataclass(frozen=True)
class Kit:
    engine: LoraEngine        # its EOS is a token the first event produces mid-way
    adapter: Path
    base: Path
    fd: int


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> Kit:
    from slfaas.testing.tinymodels import make_adapter, make_base_model

    root = tmp_path_factory.mktemp("batching")
    base = make_base_model(root / "base")
    adapter = make_adapter(base, root / "adapter", seed=7)
    plain = LoraEngine(BackboneSource(fd=build_shared_image(base).fd), base, adapter)
    probe = plain.generate(parse_event({**EVENTS[0], "ignore_eos": True}))
    eos = next(t for t in probe.token_ids[4:] if t not in probe.token_ids[:4])
    eos_base = root / "eos-base"
    shutil.copytree(base, eos_base)
    config = json.loads((eos_base / "config.json").read_text())
    config["eos_token_id"] = eos
    (eos_base / "config.json").write_text(json.dumps(config))
    (eos_base / "generation_config.json").unlink(missing_ok=True)
    image = build_shared_image(eos_base)
    return Kit(LoraEngine(BackboneSource(fd=image.fd), eos_base, adapter), adapter, eos_base, image.fd)


@pytest.fixture
def batched(kit: Kit) -> Iterator[BatchEngine]:
    engine = BatchEngine(kit.engine, 4)
    yield engine
    engine.close()


def _reqs(events: list[dict]) -> list[GenerationRequest]:
    return [parse_event(e) for e in events]


def _same(alone: Generation, batched: Generation) -> None:
    assert (batched.token_ids, batched.text, batched.finish_reason, batched.prompt_tokens) == \
        (alone.token_ids, alone.text, alone.finish_reason, alone.prompt_tokens)


def test_batched_outputs_equal_unbatched_token_for_token(kit: Kit, batched: BatchEngine) -> None:
    reqs = _reqs(EVENTS)
    alone = [kit.engine.generate(r) for r in reqs]
    assert alone[0].finish_reason == "stop" and alone[2].finish_reason == "length"   # EOS and ignore_eos seen
    together = batched.generate_many(reqs)            # 7 requests, at most 4 in a pass: the rest join later
    for a, b in zip(alone, together):
        _same(a, b)
    # the one-token request joined when one place was free: its only pass (a prefill) was its own
    assert [g.batch_size for g in together] == [4, 4, 4, 4, 4, 1, 4]
    # every pass's device time is handed out whole, each request's share below its passes' time
    assert sum(g.device_ms for g in together) == pytest.approx(batched.device_ms_total, rel=1e-9)
    for g in together:
        assert 0 < g.device_ms < g.batch_device_ms if g.batch_size > 1 else g.device_ms == g.batch_device_ms
    # fewer passes than one request at a time (one prefill + one per further token each)
    assert batched.passes < sum(max(1, g.completion_tokens) for g in alone)


def test_requests_join_and_leave_between_decode_steps(kit: Kit, batched: BatchEngine) -> None:
    """A runs alone for three passes; B arrives (held at pass 3 by a hook, no timing involved),
    is prefilled, decodes with A until A is done, then alone: 23 passes instead of 32."""
    a_req, b_req = _reqs([{"prompt": "the quick brown fox", "max_tokens": 12, "temperature": 0, "ignore_eos": True},
                          {"prompt": "hello world, how are you today?", "max_tokens": 20, "temperature": 0.7,
                           "seed": 9, "ignore_eos": True}])
    alone = [kit.engine.generate(a_req), kit.engine.generate(b_req)]
    passes = [0]
    at_third, go_on = threading.Event(), threading.Event()

    def gate(*_: object) -> None:
        passes[0] += 1
        if passes[0] == 3:
            at_third.set()
            go_on.wait(60)
    hook = kit.engine.model_base.register_forward_hook(gate)
    try:
        (a_stream,) = batched.open([a_req])
        assert at_third.wait(60)
        (b_stream,) = batched.open([b_req])
        go_on.set()
        a_tokens, b_tokens = list(a_stream), list(b_stream)
    finally:
        hook.remove()
    assert tuple(a_tokens) == alone[0].token_ids and tuple(b_tokens) == alone[1].token_ids
    assert passes[0] == batched.passes == 1 + 11 + 1 + 10
    assert a_stream.stats.batch_size == b_stream.stats.batch_size == 2
    a, b = a_stream.stats, b_stream.stats
    assert a.device_ms + b.device_ms == pytest.approx(batched.device_ms_total, rel=1e-9)


def test_stop_strings_and_closed_streams_leave_the_batch(kit: Kit, batched: BatchEngine) -> None:
    base = {"prompt": "dear sir, thank you", "max_tokens": 24, "temperature": 0, "ignore_eos": True}
    full = kit.engine.generate(parse_event(base))
    stop = full.text[len(full.text) // 2:][:3]
    assert stop.strip()
    events = [{**base, "stop": [stop]}, {**EVENTS[4]}, {**EVENTS[2]}]
    alone = [kit.engine.generate(r) for r in _reqs(events)]
    assert alone[0].finish_reason == "stop" and alone[0].completion_tokens < 24
    together = batched.generate_many(_reqs(events))
    for a, b in zip(alone, together):
        _same(a, b)
    # a reader that stops early takes its request out: the others are unaffected
    streams = batched.open(_reqs([EVENTS[4], EVENTS[2]]))
    first = [next(streams[0]) for _ in range(3)]
    streams[0].close()
    rest = list(streams[1])
    assert tuple(first) == alone[1].token_ids[:3] and tuple(rest) == alone[2].token_ids
    assert streams[0].stats.device_ms > 0 and list(streams[0]) == []


def test_prefill_device_time_is_split_by_prompt_tokens(batched: BatchEngine) -> None:
    short, long = _reqs([{"prompt": "ahoy", "max_tokens": 1, "temperature": 0},
                         {"prompt": "the quick brown fox jumps over the lazy dog. serverless functions",
                          "max_tokens": 1, "temperature": 0}])
    s, l = batched.open([short, long])
    list(s), list(l)
    assert batched.passes == 1
    a, b = s.stats, l.stats
    assert a.batch_device_ms == b.batch_device_ms == pytest.approx(batched.device_ms_total)
    assert a.device_ms / b.device_ms == pytest.approx(a.prompt_tokens / b.prompt_tokens, rel=1e-9)
    assert b.prompt_tokens > 3 * a.prompt_tokens


def test_a_failing_pass_fails_its_requests_and_the_engine_goes_on(kit: Kit, batched: BatchEngine) -> None:
    def boom(*_: object) -> None:
        raise RuntimeError("device fault")
    hook = kit.engine.model_base.register_forward_hook(boom)
    try:
        streams = batched.open(_reqs(EVENTS[:2]))
        for s in streams:
            with pytest.raises(RuntimeError, match="device fault"):
                list(s)
    finally:
        hook.remove()
    _same(kit.engine.generate(parse_event(EVENTS[4])), batched.generate(parse_event(EVENTS[4])))


def test_a_closed_engine_refuses_and_ends_its_requests(kit: Kit) -> None:
    from slfaas.functions.batching import EngineClosed

    engine = BatchEngine(kit.engine, 2)
    engine.close()
    with pytest.raises(EngineClosed):
        engine.generate(parse_event(EVENTS[0]))


def test_slots_engines_batch_too(kit: Kit) -> None:
    """A pre-warmed runtime specialised into its LoRA slots batches like a PEFT one."""
    from slfaas.functions.adapter_tensors import AdapterSource
    from slfaas.functions.slot_geometry import SlotGeometry
    from slfaas.functions.slots import WarmupShapes

    geometry = SlotGeometry(8, frozenset({"q_proj", "v_proj", "o_proj", "down_proj"}))
    slots = LoraEngine.prewarmed(BackboneSource(fd=kit.fd), kit.base, geometry, WarmupShapes((1, 7), 1))
    assert slots.specialise(AdapterSource.from_dir(kit.adapter)).path == "slots"
    engine = BatchEngine(slots, 3)
    try:
        reqs = _reqs(EVENTS[:5])
        for a, b in zip([kit.engine.generate(r) for r in reqs], engine.generate_many(reqs)):
            _same(a, b)
    finally:
        engine.close()


def test_models_whose_windows_count_padding_run_one_at_a_time(kit: Kit) -> None:
    from transformers import LlamaConfig, MistralConfig

    assert supports_padding(LlamaConfig())
    assert not supports_padding(MistralConfig(sliding_window=4096))
    assert supports_padding(MistralConfig(sliding_window=None))


def _raise_once(module: torch.nn.Module, when) -> dict:  # type: ignore[no-untyped-def]
    """A forward hook on ``module`` that raises the device's out-of-memory error the first
    time ``when(hidden_states)`` holds (after the module ran: earlier layers have cached)."""
    state = {"raised": 0}

    def hook(_m: object, _args: object, output: object) -> None:
        hidden = output[0] if isinstance(output, tuple) else output
        if not state["raised"] and when(hidden):
            state["raised"] += 1
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (a test)")
    state["handle"] = module.register_forward_hook(hook)
    return state


def test_joiners_wait_for_memory_and_outputs_stay_equal(kit: Kit) -> None:
    """A headroom of nothing beyond the safety margin: a request joins only an empty batch."""
    from slfaas.functions.kv_budget import SAFETY_BYTES

    engine = BatchEngine(kit.engine, 4, headroom=lambda: float(SAFETY_BYTES))
    try:
        reqs = _reqs(EVENTS[:4])
        together = engine.generate_many(reqs)
    finally:
        engine.close()
    assert [g.batch_size for g in together] == [1, 1, 1, 1]
    for r, g in zip(reqs, together):
        _same(kit.engine.generate(r), g)


def test_a_prefill_out_of_memory_requeues_its_joiners(kit: Kit, batched: BatchEngine) -> None:
    layer = kit.engine.model_base.model.layers[1]
    state = _raise_once(layer, lambda h: h.shape[0] > 1 and h.shape[1] > 1)   # a prefill of several rows
    try:
        reqs = _reqs([{**e, "ignore_eos": True} for e in EVENTS[:4]])
        together = batched.generate_many(reqs)
    finally:
        state["handle"].remove()
    assert state["raised"] == 1
    for r, g in zip(reqs, together):
        _same(kit.engine.generate(r), g)
    assert max(g.batch_size for g in together) >= 2      # they still batched, fewer at a time


def test_a_decode_out_of_memory_fails_only_the_newest_request(kit: Kit, batched: BatchEngine) -> None:
    """The step is rolled back (layers 0-1 had cached its token, the rest not): the older
    request goes on and computes what it would alone."""
    layer = kit.engine.model_base.model.layers[1]
    state = _raise_once(layer, lambda h: h.shape[0] == 2 and h.shape[1] == 1)   # a decode step of both
    try:
        old, new = _reqs([{"prompt": "the quick brown fox", "max_tokens": 10, "temperature": 0, "ignore_eos": True},
                          {"prompt": "dear sir", "max_tokens": 10, "temperature": 0, "ignore_eos": True}])
        streams = batched.open([old, new])
        with pytest.raises(torch.OutOfMemoryError):
            list(streams[1])
        tokens = list(streams[0])
    finally:
        state["handle"].remove()
    assert state["raised"] == 1
    assert tokens == list(kit.engine.generate(old).token_ids)
    _same(kit.engine.generate(new), batched.generate(new))     # the engine goes on


def test_a_lone_request_waits_for_memory_then_fails_with_the_error(kit: Kit, batched: BatchEngine,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import slfaas.functions.batching as batching

    req = parse_event({**EVENTS[2], "max_tokens": 6})          # seeded sampling: its generator restarts
    alone = kit.engine.generate(req)
    layer = kit.engine.model_base.model.layers[1]
    state = _raise_once(layer, lambda h: h.shape[1] > 1)
    try:
        _same(alone, batched.generate(req))   # one refusal, then memory came free
    finally:
        state["handle"].remove()
    assert state["raised"] == 1

    monkeypatch.setattr(batching, "LONE_OOM_WAIT_S", 0.0)
    def always(*_: object) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory (a test)")
    hook = layer.register_forward_hook(always)
    bounded = BatchEngine(kit.engine, 4, bound_bytes=1536 * 2**20)   # a node's bound is named in the error
    try:
        with pytest.raises(torch.OutOfMemoryError) as plain:
            batched.generate(req)
        with pytest.raises(torch.OutOfMemoryError, match=r"may hold 1536 MiB .*--instance-gpu-mb"):
            bounded.generate(req)
    finally:
        hook.remove()
        bounded.close()
    assert "--instance-gpu-mb" not in str(plain.value)
    _same(alone, batched.generate(req))


def test_an_emptied_batch_releases_its_memory_once(kit: Kit) -> None:
    released = threading.Event()
    calls: list[int] = []

    def release() -> None:
        calls.append(engine.passes)
        released.set()
    engine = BatchEngine(kit.engine, 4, release_idle=release)
    try:
        together = engine.generate_many(_reqs(EVENTS[:4]))
        assert released.wait(timeout=60)
        assert calls == [engine.passes]          # after the last pass, not between passes
        assert max(g.batch_size for g in together) == 4
    finally:
        engine.close()


def test_a_failing_memory_probe_fails_its_requests_not_the_loop(kit: Kit) -> None:
    calls: list[int] = []

    def headroom() -> float | None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("CUDA error: an illegal memory access (a test)")
        return None
    engine = BatchEngine(kit.engine, 4, headroom=headroom)
    try:
        with pytest.raises(RuntimeError, match="illegal memory access"):
            list(engine.stream(parse_event(EVENTS[4])))
        _same(kit.engine.generate(parse_event(EVENTS[4])), engine.generate(parse_event(EVENTS[4])))
    finally:
        engine.close()


def test_a_waiting_request_closed_by_its_reader_leaves_at_once(kit: Kit) -> None:
    """B waits for memory while A generates 400 tokens; B's reader closes: the close returns
    after the loop's next step, not when A is done."""
    from slfaas.functions.kv_budget import SAFETY_BYTES

    engine = BatchEngine(kit.engine, 4, headroom=lambda: float(SAFETY_BYTES))
    try:
        a = engine.stream(parse_event({"prompt": "hi", "max_tokens": 400, "temperature": 0, "ignore_eos": True}))
        next(a)
        b = engine.stream(parse_event({"prompt": "x", "max_tokens": 5, "temperature": 0}))
        b.close()
        assert a.stats.prompt_tokens and a._seq.emitted < 400   # A was still generating when B's close returned
        a.close()
    finally:
        engine.close()


def test_requeued_joiners_are_not_failed_by_their_neighbours_error(kit: Kit, batched: BatchEngine) -> None:
    """B's prefill runs out of memory (B goes back to the queue); in the same iteration A's
    decode step fails for another reason: A gets that error, B runs later as it would alone."""
    b_req = parse_event({"prompt": "xyz abc", "max_tokens": 12, "temperature": 0, "ignore_eos": True})
    b_alone = kit.engine.generate(b_req)
    layer = kit.engine.model_base.model.layers[1]
    armed = {"step": -1}

    def hook(_m: object, _a: object, out: object) -> None:
        h = out[0] if isinstance(out, tuple) else out
        if armed["step"] == 0 and h.shape[1] > 1:
            armed["step"] = 1
            raise torch.OutOfMemoryError("CUDA out of memory (a test)")
        if armed["step"] == 1 and h.shape[1] == 1:
            armed["step"] = 2
            raise RuntimeError("device fault (a test)")
    handle = layer.register_forward_hook(hook)
    try:
        a = batched.stream(parse_event({"prompt": "hi", "max_tokens": 400, "temperature": 0, "ignore_eos": True}))
        next(a)
        armed["step"] = 0
        b = batched.stream(b_req)
        with pytest.raises(RuntimeError, match="device fault"):
            list(a)
        assert list(b) == list(b_alone.token_ids)
    finally:
        handle.remove()
    assert armed["step"] == 2


def test_a_step_failing_before_its_mask_column_rolls_back_nothing_else(kit: Kit, batched: BatchEngine,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from slfaas.functions.batch_cache import PaddedBatch

    original = PaddedBatch.decode_mask
    calls = {"n": 0}

    def decode_mask(self: PaddedBatch) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] == 3 and self.rows == 2:
            raise torch.OutOfMemoryError("CUDA out of memory (a test)")
        return original(self)
    monkeypatch.setattr(PaddedBatch, "decode_mask", decode_mask)
    old, new = _reqs([{"prompt": "the quick brown fox", "max_tokens": 10, "temperature": 0, "ignore_eos": True},
                      {"prompt": "dear sir", "max_tokens": 10, "temperature": 0, "ignore_eos": True}])
    streams = batched.open([old, new])
    with pytest.raises(torch.OutOfMemoryError):
        list(streams[1])
    assert list(streams[0]) == list(kit.engine.generate(old).token_ids)
