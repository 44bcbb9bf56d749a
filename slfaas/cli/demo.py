"""``slfaas demo``: the whole path on the embedded default, from nothing to two answers."""
from __future__ import annotations

import json
import time
from pathlib import Path

import click

from slfaas.client import CliError, api, lambda_client, zip_adapter
from slfaas.cli.core import examples, ui
from slfaas.cli.server_cmd import DEFAULT_DATA_DIR
from slfaas.cli.ui import Ui

BASE_MODEL_NAME = "tiny-llama"
TRAIN_STEPS = 150


def _say(msg: str) -> None:
    click.echo(msg)


def ensure_assets(assets: Path, out: Ui | None = None) -> tuple[Path, dict[str, Path]]:
    """A tiny random Llama and two adapters trained to say different things (built once)."""
    from slfaas.testing.tinymodels import DEMO_TEXTS, make_base_model, make_trained_adapter

    out = out or Ui(quiet=True)
    base = assets / "base"
    if not (base / "config.json").is_file():
        _say(f"[1/5] building a tiny random Llama base model in {base} ...")
        with out.step("building the base model and its tokenizer", plain=False):
            make_base_model(base)
    else:
        _say(f"[1/5] using the tiny base model in {base}")
    adapters = {}
    for name, text in DEMO_TEXTS.items():
        adapter = assets / f"adapter-{name}"
        if not (adapter / "adapter_model.safetensors").is_file():
            _say(f"      training LoRA adapter '{name}' (a few seconds) ...")
            with out.counted(f"training '{name}'", TRAIN_STEPS, plain=False) as advance:
                make_trained_adapter(base, adapter, text, steps=TRAIN_STEPS, base_model_name=BASE_MODEL_NAME,
                                     on_step=advance)
        adapters[name] = adapter
    return base, adapters


def run_demo(data_dir: Path, port: int = 0, out: Ui | None = None) -> int:
    import logging

    from slfaas.faas.server import ServerConfig, SlfaasServer
    from slfaas.testing.tinymodels import DEMO_PROMPT

    out = out or Ui(quiet=True)
    logging.basicConfig(level=logging.WARNING)
    data_dir = Path(data_dir).expanduser().resolve()
    base, adapters = ensure_assets(data_dir / "assets", out)
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
            with out.step(f"deploying {fn} (backbone loading on the node)", plain=False):
                client.create_function(FunctionName=fn, Runtime="slfaas-lora",
                                       Role="arn:aws:iam::000000000000:role/demo",
                                       Code={"ZipFile": zip_adapter(adapter)}, Timeout=120)
                client.get_waiter("function_active_v2").wait(FunctionName=fn,
                                                             WaiterConfig={"Delay": 1, "MaxAttempts": 120})
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


@click.command("demo", epilog=examples("slfaas demo", "slfaas demo --data-dir /tmp/slfaas-demo --port 9100"))
@click.option("--data-dir", default=str(DEFAULT_DATA_DIR / "demo"), show_default=True,
              help="where the tiny model, the adapters and the server's data go")
@click.option("--port", type=int, default=0, show_default=True, help="server port, 0 for a free one")
@click.pass_context
def demo(ctx: click.Context, data_dir: str, port: int) -> None:
    """End to end on a tiny model: serve, deploy, invoke.

    Makes a tiny model and two trained adapters (if absent), starts a server, deploys both
    through boto3, invokes them and prints the results."""
    code = run_demo(Path(data_dir), port=port, out=ui(ctx))
    if code:
        raise CliError("the demo's invocations failed (see above)")
