"""Cold-start latency by sandbox backend: process and docker, each without and with a warm pool.

For each backend: start a real `slfaas server`, deploy N functions (different random LoRA
adapters of one tiny Llama) through boto3 and invoke each once: every first invocation is a
cold start (a new instance; the backbone is already resident, as Active functions guarantee).
Reported per backend: median and max client-observed latency of those first invocations, the
node's Init Duration (from the REPORT log lines), and a warm invocation for reference. With a
warm pool the bench waits, between cold starts, until the pool holds a ready runtime again:
that is the steady state a pool is for (its refill time is not on any request's path).

    python bench/cold_start.py [--functions 5] [--backends process,process-pool,docker,docker-pool]
                               [--json out.json]
"""
import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from slfaas.testing.serverproc import ServerProcess

EVENT = json.dumps({"prompt": "hello world", "max_tokens": 4, "temperature": 0}).encode()
BACKENDS = {"process": ["--sandbox", "process"], "process-pool": ["--sandbox", "process", "--warm-pool", "1"],
            "docker": ["--sandbox", "docker"], "docker-pool": ["--sandbox", "docker", "--warm-pool", "1"]}
READY = r"warm-pool (container|process) \w+ ready"


@dataclass(frozen=True)
class ColdStartResult:
    backend: str
    functions: int
    cold_ms: list[float]
    cold_median_ms: float
    cold_max_ms: float
    init_median_ms: float
    warm_ms: float


def _init_ms(data_dir: Path, name: str) -> float | None:
    log_file = data_dir / "logs" / f"{name}.log"
    if not log_file.is_file():
        return None
    m = re.search(r"Init Duration: ([\d.]+) ms", log_file.read_text())
    return float(m.group(1)) if m else None


def measure(backend: str, n: int, assets: Path, log=print) -> ColdStartResult:
    from slfaas.client import lambda_client, zip_adapter
    from slfaas.testing.tinymodels import make_adapter, make_base_model

    base = assets / "base-tiny"
    if not (base / "config.json").is_file():
        make_base_model(base)
    adapters = []
    for k in range(n):
        out = assets / f"adapter-tiny-{k}"
        if not (out / "adapter_model.safetensors").is_file():
            make_adapter(base, out, seed=200 + k, base_model_name=str(base))
        adapters.append(out)
    with tempfile.TemporaryDirectory(prefix="slfaas-cold-") as tmp:
        data_dir = Path(tmp)
        server = ServerProcess(data_dir, "--keep-alive-s", "3600", "--log-level", "info", *BACKENDS[backend])
        try:
            client = lambda_client(server.url)
            for k, adapter in enumerate(adapters):
                client.create_function(FunctionName=f"cold-{k}", Runtime="slfaas-lora", Role="arn:aws:iam::0:role/x",
                                       Code={"ZipFile": zip_adapter(adapter)}, Timeout=300)
                client.get_waiter("function_active_v2").wait(FunctionName=f"cold-{k}",
                                                             WaiterConfig={"Delay": 0.2, "MaxAttempts": 600})
            cold_ms, init_ms = [], []
            for k in range(n):
                if backend.endswith("-pool"):  # steady state: a ready runtime waits in the pool
                    deadline = time.time() + 300
                    while server.count(READY) <= k and time.time() < deadline:
                        time.sleep(0.1)
                    time.sleep(0.5)
                t0 = time.perf_counter()
                resp = client.invoke(FunctionName=f"cold-{k}", Payload=EVENT)
                body = json.loads(resp["Payload"].read())
                cold_ms.append((time.perf_counter() - t0) * 1000)
                if resp.get("FunctionError") or not body["metrics"]["cold_start"]:
                    raise RuntimeError(f"cold-{k}: {body}")
                init_ms.append(_init_ms(data_dir, f"cold-{k}") or float("nan"))
                log(f"{backend:12} cold start {k + 1}/{n}: {cold_ms[-1]:7.0f} ms (Init Duration {init_ms[-1]:.0f} ms)")
            if backend.endswith("-pool"):  # let the refill's imports finish: they compete for the CPU
                deadline = time.time() + 300
                while server.count(READY) <= n and time.time() < deadline:
                    time.sleep(0.1)
            client.invoke(FunctionName="cold-0", Payload=EVENT)["Payload"].read()
            t0 = time.perf_counter()
            client.invoke(FunctionName="cold-0", Payload=EVENT)["Payload"].read()
            warm_ms = (time.perf_counter() - t0) * 1000
        finally:
            server.close()
    return ColdStartResult(backend, n, [round(x, 1) for x in cold_ms], round(statistics.median(cold_ms), 1),
                           round(max(cold_ms), 1), round(statistics.median(init_ms), 1), round(warm_ms, 1))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--functions", type=int, default=5, help="cold starts per backend (default %(default)s)")
    ap.add_argument("--backends", default="process,process-pool,docker,docker-pool")
    ap.add_argument("--assets", default=os.path.expanduser("~/.cache/slfaas/bench-assets"))
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    results = [measure(b, args.functions, Path(args.assets)) for b in args.backends.split(",")]
    ref = next((r for r in results if r.backend == "process"), None)
    print()
    print(f"{'backend':12} {'cold median':>12} {'cold max':>10} {'init median':>12} {'warm':>8} {'vs process':>11}")
    for r in results:
        ratio = f"{r.cold_median_ms / ref.cold_median_ms:10.2f}×" if ref else ""
        print(f"{r.backend:12} {r.cold_median_ms:10.0f}ms {r.cold_max_ms:8.0f}ms {r.init_median_ms:10.0f}ms "
              f"{r.warm_ms:6.0f}ms {ratio}")
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in results], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
