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
