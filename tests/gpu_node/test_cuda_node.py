"""The CUDA node: one GPU arena borrowed read-only through a CUDA VMM descriptor by isolated
instances (their own uid), or through a legacy IPC handle. Skipped without a GPU; run on the
GPU machine by `python bench/gpu_node.py --phases tests` (see docs/BENCHMARKS.md)."""
from __future__ import annotations

import json

import pytest

from tests.conftest import deploy

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (run on the GPU machine)")]

EVIL = '''
import torch
def handler(event, context):
    base = next(p for n, p in context.model.named_parameters() if "lora_" not in n and p.dim() == 2)
    base.data.view(-1)[:1024] += 1.0   # read-only VMM mapping: the GPU refuses; IPC memory: only the check sees it
    torch.cuda.synchronize()
    return {"tampered": True}
'''


def _reference(base, adapter, prompt: str, n: int) -> str:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(base))
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(base)).to("cuda"), str(adapter)).eval()
    enc = tok(prompt, return_tensors="pt").to("cuda")
    with torch.inference_mode():
        out = model.generate(**enc, max_new_tokens=n, do_sample=False)
    return tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)


def _invoke(client, name: str, payload: dict) -> dict:
    r = client.invoke(FunctionName=name, Payload=json.dumps(payload))
    body = json.loads(r["Payload"].read())
    assert "FunctionError" not in r, body
    return body


def test_isolated_cuda_functions_match_peft_and_cannot_write_the_backbone(tiny_assets, live_server_factory) -> None:
    """The default: each instance its own uid in its own namespaces, the arena mapped read-only
    through a VMM descriptor. A write dies in that instance alone; the arena stays unchanged."""
    server = live_server_factory("--device", "cuda", "--verify-interval-s", "0")
    c = server.client()
    deploy(c, "ga", tiny_assets.zip(tiny_assets.adapter_a))
    deploy(c, "gb", tiny_assets.zip(tiny_assets.adapter_b))
    event = {"prompt": "the quick brown fox", "max_tokens": 16, "temperature": 0}
    a, b = _invoke(c, "ga", event)["text"], _invoke(c, "gb", event)["text"]
    assert a == _reference(tiny_assets.base, tiny_assets.adapter_a, event["prompt"], 16)
    assert b == _reference(tiny_assets.base, tiny_assets.adapter_b, event["prompt"], 16)
    assert a != b
    node = server.api("GET", "/slfaas/v1/node")
    uids = {i["pid"]: _uid(i["pid"]) for i in node["Instances"]}
    assert len(set(uids.values())) == 2 and 0 not in uids.values()   # each its own, none root

    deploy(c, "evil", tiny_assets.zip(tiny_assets.adapter_a, {"handler.py": EVIL}))
    r = c.invoke(FunctionName="evil", Payload=json.dumps({"prompt": "x"}))
    assert r.get("FunctionError") == "Unhandled"
    error = json.loads(r["Payload"].read())
    assert "illegal" in error["errorMessage"].lower() or error["errorType"] == "Runtime.ExitError", error
    # its CUDA context is lost: the instance ended after reporting it, alone
    assert _wait(lambda: all(i["function_name"] != "evil" for i in server.api("GET", "/slfaas/v1/node")["Instances"]))
    checks = server.api("POST", "/slfaas/v1/node/verify")["Checks"]
    assert len(checks) == 1 and checks[0]["ok"], checks          # the arena is unchanged
    assert _invoke(c, "ga", event)["text"] == a                   # the others never noticed
    assert server.alive()


def _wait(pred, timeout_s: float = 30.0) -> bool:  # type: ignore[no-untyped-def]
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.1)
    return bool(pred())


def _uid(pid: int) -> int:
    from pathlib import Path

    return int(Path(f"/proc/{pid}/status").read_text().split("Uid:")[1].split()[0])


def test_legacy_ipc_tampering_is_detected_and_recovered(tiny_assets, live_server_factory, monkeypatch) -> None:
    """Without VMM (a legacy IPC handle, writable by its borrowers; unisolated), the node's digest
    catches a write, stops the borrowers and reloads the arena without a restart."""
    monkeypatch.setenv("SLFAAS_ARENA", "ipc")
    server = live_server_factory("--device", "cuda", "--verify-interval-s", "0", "--insecure-sandbox")
    c = server.client()
    deploy(c, "ga", tiny_assets.zip(tiny_assets.adapter_a))
    deploy(c, "gb", tiny_assets.zip(tiny_assets.adapter_b))
    event = {"prompt": "the quick brown fox", "max_tokens": 16, "temperature": 0}
    a = _invoke(c, "ga", event)["text"]
    assert a == _reference(tiny_assets.base, tiny_assets.adapter_a, event["prompt"], 16)
    _invoke(c, "gb", event)

    node = server.api("GET", "/slfaas/v1/node")
    assert node["Device"].startswith("cuda") and len(node["Backbones"]) == 1
    assert node["Gpu"]["backbones_mb"] >= 0

    assert all(ch["ok"] for ch in server.api("POST", "/slfaas/v1/node/verify")["Checks"])
    deploy(c, "evil", tiny_assets.zip(tiny_assets.adapter_a, {"handler.py": EVIL}))
    assert _invoke(c, "evil", {"prompt": "x"}) == {"tampered": True}
    checks = server.api("POST", "/slfaas/v1/node/verify")["Checks"]
    assert len(checks) == 1 and not checks[0]["ok"]
    assert checks[0]["bad_tensors"] and len(checks[0]["stopped_instances"]) == 3  # ga, gb and evil
    assert checks[0]["reload_s"] is not None
    assert server.alive()

    # recovered without a restart: fresh instances, correct outputs, clean check
    again = _invoke(c, "ga", event)
    assert again["metrics"]["cold_start"] is True and again["text"] == a
    assert all(ch["ok"] for ch in server.api("POST", "/slfaas/v1/node/verify")["Checks"])
    events = server.api("GET", "/slfaas/v1/node/integrity?failures=1")["Events"]
    assert len(events) == 1 and events[0]["bad_tensors"]
    logs = server.api("GET", "/slfaas/v1/functions/ga/logs")
    assert "integrity check failed" in logs


def test_cuda_refuses_instances_that_do_not_fit(tiny_assets, live_server_factory) -> None:
    free_mb = torch.cuda.mem_get_info()[0] >> 20
    server = live_server_factory("--device", "cuda", "--instance-gpu-mb", str(free_mb * 4))
    c = server.client()
    deploy(c, "big", tiny_assets.zip(tiny_assets.adapter_a))
    with pytest.raises(c.exceptions.TooManyRequestsException, match="Not enough GPU memory"):
        c.invoke(FunctionName="big", Payload=json.dumps({"prompt": "x", "max_tokens": 2}))
    assert server.alive()


def test_a_batching_instance_is_held_to_its_share_and_its_batches_match_alone(tiny_assets, live_server_factory) -> None:
    """A runtime that batches gets the node's --instance-gpu-mb as its bound (its allocator held
    to it, its batches admitted under it): concurrent greedy requests equal each alone."""
    from concurrent.futures import ThreadPoolExecutor
    from pathlib import Path

    server = live_server_factory("--device", "cuda", "--verify-interval-s", "0", "--instance-gpu-mb", "512")
    c = server.client()
    deploy(c, "gbatch", tiny_assets.zip(tiny_assets.adapter_a), Environment={"Variables": {"SLFAAS_MAX_BATCH_SIZE": "4"}})
    events = [{"prompt": f"prompt number {k} " * (1 + 3 * k), "max_tokens": 12, "temperature": 0} for k in range(4)]
    alone = [_invoke(c, "gbatch", e)["text"] for e in events]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda e: _invoke(c, "gbatch", e)["text"], events))
    assert together == alone
    pids = [i["pid"] for i in server.api("GET", "/slfaas/v1/node")["Instances"] if i["function_name"] == "gbatch"]
    environ = Path(f"/proc/{pids[0]}/environ").read_bytes().split(b"\0")
    assert b"SLFAAS_INSTANCE_DEVICE_MB=512" in environ
