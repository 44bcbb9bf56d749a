"""``slfaas demo``: the whole path on the embedded default, from nothing to two answers."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from slfaas.cli.client import api, lambda_client, zip_adapter

BASE_MODEL_NAME = "tiny-llama"


def _say(msg: str) -> None:
    print(msg, flush=True)


def ensure_assets(assets: Path) -> tuple[Path, dict[str, Path]]:
    """A tiny random Llama and two adapters trained to say different things (built once)."""
    from slfaas.testing.tinymodels import DEMO_TEXTS, make_base_model, make_trained_adapter

    base = assets / "base"
    if not (base / "config.json").is_file():
        _say(f"[1/5] building a tiny random Llama base model in {base} ...")
        make_base_model(base)
    else:
        _say(f"[1/5] using the tiny base model in {base}")
    adapters = {}
    for name, text in DEMO_TEXTS.items():
        out = assets / f"adapter-{name}"
        if not (out / "adapter_model.safetensors").is_file():
            _say(f"      training LoRA adapter '{name}' (a few seconds) ...")
            make_trained_adapter(base, out, text, base_model_name=BASE_MODEL_NAME)
        adapters[name] = out
    return base, adapters


def run_demo(data_dir: Path, port: int = 0) -> int:
    import logging

    from slfaas.faas.server import ServerConfig, SlfaasServer
    from slfaas.testing.tinymodels import DEMO_PROMPT

    logging.basicConfig(level=logging.WARNING)
    data_dir = Path(data_dir).expanduser().resolve()
    base, adapters = ensure_assets(data_dir / "assets")
    _say(f"[2/5] starting an embedded slfaas server (data dir {data_dir / 'server'}) ...")
    server = SlfaasServer(ServerConfig(data_dir=data_dir / "server", port=port, keep_alive_s=120)).start_background()
    try:
        endpoint = server.url
        _say(f"      listening on {endpoint}")
        api(endpoint, "POST", "/slfaas/v1/models", {"Name": BASE_MODEL_NAME, "Path": str(base)})
        client = lambda_client(endpoint)
        _say("[3/5] deploying both adapters as functions through boto3 ...")
        for name, adapter in adapters.items():
            fn = f"demo-{name}"
            try:
                client.delete_function(FunctionName=fn)
            except client.exceptions.ResourceNotFoundException:
                pass
            client.create_function(FunctionName=fn, Runtime="slfaas-lora", Role="arn:aws:iam::000000000000:role/demo",
                                   Code={"ZipFile": zip_adapter(adapter)}, Timeout=120)
            client.get_waiter("function_active_v2").wait(FunctionName=fn, WaiterConfig={"Delay": 1, "MaxAttempts": 120})
            _say(f"      {fn}: Active")
        _say(f"[4/5] invoking each function with prompt {DEMO_PROMPT!r} (greedy) ...")
        event = json.dumps({"prompt": DEMO_PROMPT, "max_tokens": 40, "temperature": 0}).encode()
        for round_ in ("cold", "warm"):
            for name in adapters:
                t0 = time.perf_counter()
                resp = client.invoke(FunctionName=f"demo-{name}", Payload=event)
                body = json.loads(resp["Payload"].read())
                wall_ms = (time.perf_counter() - t0) * 1000
                if resp.get("FunctionError"):
                    _say(f"      demo-{name}: FUNCTION ERROR {body}")
                    return 1
                m = body["metrics"]
                _say(f"      demo-{name} ({round_}, {wall_ms:7.0f} ms, ttft {m['ttft_ms']:.1f} ms, "
                     f"cold_start={m['cold_start']}): {body['text'].strip()!r}")
        node = api(endpoint, "GET", "/slfaas/v1/node")
        _say("[5/5] node: " + ", ".join(f"backbone {Path(b['model_path']).name} {b['size_bytes'] / 1e6:.1f} MB "
                                        f"loaded once" for b in node["Backbones"])
             + f", {len(node['Instances'])} instances borrowing it")
        _say(f"done. Logs: {data_dir / 'server' / 'logs'}")
        return 0
    finally:
        server.close()


if __name__ == "__main__":
    sys.exit(run_demo(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("~/.slfaas/demo")))
