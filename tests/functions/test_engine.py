"""LoraEngine on a real tiny model with a borrowed (sealed memfd) backbone."""
from __future__ import annotations


import pytest

from slfaas.functions.engine import BackboneSource, LoraEngine
from slfaas.functions.events import parse_event
from slfaas.gpu_node.resources.shared_weights import build_shared_image


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> LoraEngine:
    from slfaas.testing.tinymodels import make_adapter, make_base_model

    root = tmp_path_factory.mktemp("engine")
    base = make_base_model(root / "base")
    adapter = make_adapter(base, root / "adapter", seed=7)
    image = build_shared_image(base)
    return LoraEngine(BackboneSource(fd=image.fd), base, adapter)


def _count_forwards(engine: LoraEngine) -> list[int]:
    calls = [0]
    engine.model_base.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_one_forward_per_token_and_none_wasted(engine: LoraEngine) -> None:
    calls = _count_forwards(engine)
    for n in (1, 2, 5):
        before = calls[0]
        gen = engine.generate(parse_event({"prompt": "the quick brown fox", "max_tokens": n, "temperature": 0}))
        if gen.finish_reason == "length":
            assert gen.completion_tokens == n
            # one prefill + (n - 1) decode steps: no forward for a token nobody reads
            assert calls[0] - before == n
        assert gen.prompt_tokens > 0 and gen.ttft_ms > 0 and gen.prefill_ms > 0


def test_parameters_are_views_of_the_shared_image(engine: LoraEngine) -> None:
    import warnings

    import torch

    mapping = engine._backbone_keepalive
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start = torch.frombuffer(mapping, dtype=torch.uint8, count=1).data_ptr()
    end = start + len(mapping)
    base_params = [p for n, p in engine.model.named_parameters() if "lora_" not in n]
    lora = [p for n, p in engine.model.named_parameters() if "lora_" in n]
    assert base_params and lora  # the adapter is attached, unmerged, beside the base weights
    # every backbone weight lives inside the node's shared mapping (zero copy) ...
    assert all(start <= p.data_ptr() < end for p in base_params)
    # ... and the adapter's weights are this instance's own memory
    assert all(not start <= p.data_ptr() < end for p in lora)


def test_sampling_is_seeded_and_stops_on_strings(engine: LoraEngine) -> None:
    ev = {"prompt": "hello world", "max_tokens": 12, "temperature": 0.9, "top_p": 0.8, "seed": 123,
          "return_tokens": True}
    a, b = engine.generate(parse_event(ev)), engine.generate(parse_event(ev))
    assert a.token_ids == b.token_ids and len(a.token_ids) >= 1
    c = engine.generate(parse_event({**ev, "seed": 124}))
    d = engine.generate(parse_event({**ev, "seed": 125}))
    assert len({a.token_ids, c.token_ids, d.token_ids}) > 1  # seeds matter
    greedy = engine.generate(parse_event({"prompt": "hello world", "max_tokens": 12, "temperature": 0}))
    if len(greedy.text) > 2:
        stop = greedy.text[1:3]
        cut = engine.generate(parse_event({"prompt": "hello world", "max_tokens": 12, "temperature": 0,
                                           "stop": [stop]}))
        assert cut.finish_reason == "stop" and stop not in cut.text and greedy.text.startswith(cut.text)


def test_ignore_eos_generates_exactly_max_tokens(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A base model whose EOS is the token greedy decoding picks first: without ignore_eos
    generation stops there; with it, exactly max_tokens come, the same ones as before EOS
    was that token (EOS is then an ordinary token), buffered and streamed alike."""
    import json
    import shutil
    from contextlib import closing

    from slfaas.functions.textstream import stream_text
    from slfaas.testing.tinymodels import make_adapter, make_base_model

    event = {"prompt": "the quick brown fox", "max_tokens": 12, "temperature": 0, "return_tokens": True}
    base = make_base_model(tmp_path / "base")
    adapter = make_adapter(base, tmp_path / "adapter", seed=7)
    plain = LoraEngine(BackboneSource(fd=build_shared_image(base).fd), base, adapter)
    reference = plain.generate(parse_event({**event, "ignore_eos": True}))
    assert reference.completion_tokens == 12
    first = reference.token_ids[0]

    eos_base = tmp_path / "eos-base"
    shutil.copytree(base, eos_base)
    config = json.loads((eos_base / "config.json").read_text())
    config["eos_token_id"] = first
    (eos_base / "config.json").write_text(json.dumps(config))
    (eos_base / "generation_config.json").unlink(missing_ok=True)
    eos_engine = LoraEngine(BackboneSource(fd=build_shared_image(eos_base).fd), eos_base, adapter)
    assert first in eos_engine.eos_ids

    stopped = eos_engine.generate(parse_event(event))
    assert stopped.finish_reason == "stop" and stopped.completion_tokens == 1
    full = eos_engine.generate(parse_event({**event, "ignore_eos": True}))
    assert full.finish_reason == "length" and full.token_ids == reference.token_ids
    with closing(stream_text(eos_engine, parse_event({**event, "ignore_eos": True}))) as gen:
        try:
            while True:
                next(gen)
        except StopIteration as stop:
            streamed = stop.value
    assert streamed.token_ids == reference.token_ids and streamed.finish_reason == "length"
