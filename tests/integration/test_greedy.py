"""Acceptance 3: a function's greedy output equals plain PEFT + transformers generation run in
this process on the same base model and adapter (the shared read-only backbone changes nothing),
token counts included; two adapters on one backbone give different outputs."""
from __future__ import annotations

import pytest

from tests.conftest import deploy
from tests.integration._util import invoke, node

MAX_TOKENS = 24
PROMPTS = ["Tell me something:", "the sea is calm and the sails are", "hello"]


@pytest.fixture(scope="module")
def client(module_server):  # type: ignore[no-untyped-def]
    return module_server.client()


@pytest.fixture(scope="module")
def functions(tiny_assets, client):  # type: ignore[no-untyped-def]
    deploy(client, "greedy-a", tiny_assets.zip(tiny_assets.adapter_a))
    deploy(client, "greedy-b", tiny_assets.zip(tiny_assets.adapter_b))
    return {"greedy-a": tiny_assets.adapter_a, "greedy-b": tiny_assets.adapter_b}


@pytest.fixture(scope="module")
def reference(tiny_assets):  # type: ignore[no-untyped-def]
    """(adapter, prompt) → (text, prompt_tokens, completion_tokens, finish_reason), computed here."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_assets.base))
    cache: dict = {}

    def ref(adapter, prompt: str) -> tuple[str, int, int, str]:  # type: ignore[no-untyped-def]
        key = (str(adapter), prompt)
        if key not in cache:
            model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tiny_assets.base)),
                                              str(adapter))
            model.eval()
            enc = tok(prompt, return_tensors="pt")
            with torch.no_grad():
                out = model.generate(**enc, max_new_tokens=MAX_TOKENS, do_sample=False,
                                     pad_token_id=tok.eos_token_id)
            prompt_len = enc["input_ids"].shape[1]
            new_ids = out[0, prompt_len:].tolist()
            finish = "stop" if new_ids and new_ids[-1] == tok.eos_token_id else "length"
            cache[key] = (tok.decode(new_ids, skip_special_tokens=True), prompt_len, len(new_ids), finish)
        return cache[key]

    return ref


@pytest.mark.parametrize("name", ["greedy-a", "greedy-b"])
def test_greedy_output_equals_reference(functions, reference, client, name):  # type: ignore[no-untyped-def]
    # At least one prompt must generate a long text, or the comparison would prove little.
    assert max(reference(functions[name], p)[2] for p in PROMPTS) == MAX_TOKENS
    for prompt in PROMPTS:
        resp, body = invoke(client, name, {"prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0})
        assert "FunctionError" not in resp, body
        text, prompt_tokens, completion_tokens, finish = reference(functions[name], prompt)
        assert body["text"] == text, (name, prompt)
        assert body["usage"]["prompt_tokens"] == prompt_tokens
        assert body["usage"]["completion_tokens"] == completion_tokens
        assert body["finish_reason"] == finish


def test_two_adapters_share_one_backbone_and_differ(functions, reference, module_server,  # type: ignore[no-untyped-def]
                                                    client):
    event = {"prompt": PROMPTS[1], "max_tokens": MAX_TOKENS, "temperature": 0}
    _, a = invoke(client, "greedy-a", event)
    _, b = invoke(client, "greedy-b", event)
    assert a["text"] != b["text"]
    # The references differ too, so the difference is the adapters', not noise.
    assert reference(functions["greedy-a"], PROMPTS[1])[0] != reference(functions["greedy-b"], PROMPTS[1])[0]
    status = node(module_server)
    assert len(status["Backbones"]) == 1  # both functions run on the one resident backbone
    names = {i["function_name"] for i in status["Instances"]}
    assert {"greedy-a", "greedy-b"} <= names
    pids = {i["pid"] for i in status["Instances"]}
    assert len(pids) == len(status["Instances"])  # separate processes


def test_greedy_is_repeatable_and_max_tokens_caps(functions, client):  # type: ignore[no-untyped-def]
    event = {"prompt": PROMPTS[0], "max_tokens": MAX_TOKENS, "temperature": 0}
    outs = {invoke(client, "greedy-a", event)[1]["text"] for _ in range(2)}
    assert len(outs) == 1
    _, short = invoke(client, "greedy-a", {**event, "max_tokens": 3})
    assert short["usage"]["completion_tokens"] <= 3
