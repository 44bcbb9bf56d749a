"""Cold start and warm invoke latency of several checkouts of slfaas, side by side, interleaved.

Each round starts one real `slfaas server` per checkout (its own code: the checkout is the
server's working directory and PYTHONPATH), deploys the same tiny adapter through boto3,
measures the first invocation (a cold start: a new instance on a resident backbone) and then
``--warm`` warm invocations, and stops the server. Rounds alternate the order of checkouts, so
a machine's drift hits every checkout alike. Reported per checkout: the median cold start over
rounds, the median warm invoke over all warm samples, and each as a ratio to the first checkout.

    python bench/compare_checkouts.py --checkout before=../before --checkout after=. \\
        [--rounds 5] [--warm 30] [--json out.json]

A checkout's server flags follow two colons: ``--checkout isolated=.::--warm-pool=0``.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

EVENT = json.dumps({"prompt": "hello world", "max_tokens": 4, "temperature": 0}).encode()


class _Server:
    def __init__(self, checkout: Path, data_dir: Path, extra: list[str]):
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(checkout)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "slfaas.cli.main", "server", "--port", "0", "--data-dir", str(data_dir),
             "--keep-alive-s", "600", "--log-level", "warning", *extra],
            cwd=checkout, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        assert self.proc.stdout is not None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"server of {checkout} exited:\n" + "".join(self.lines))
            self.lines.append(line)
            if m := re.search(r"listening on (http://\S+)", line):
                self.url = m.group(1)
                break
        else:
            raise RuntimeError(f"server of {checkout} did not start")
        threading.Thread(target=lambda: [self.lines.append(x) for x in self.proc.stdout], daemon=True).start()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)


def _round(checkout: Path, extra: list[str], adapter: Path, warm: int) -> tuple[float, list[float]]:
    from slfaas.client import lambda_client, zip_adapter

    with tempfile.TemporaryDirectory(prefix="slfaas-cmp-") as tmp:
        server = _Server(checkout, Path(tmp), extra)
        try:
            client = lambda_client(server.url)
            client.create_function(FunctionName="cmp", Runtime="slfaas-lora", Role="arn:aws:iam::0:role/x",
                                   Code={"ZipFile": zip_adapter(adapter)}, Timeout=300, MemorySize=2048)
            client.get_waiter("function_active_v2").wait(FunctionName="cmp",
                                                         WaiterConfig={"Delay": 0.2, "MaxAttempts": 600})

            def invoke() -> float:
                t0 = time.perf_counter()
                r = client.invoke(FunctionName="cmp", Payload=EVENT)
                body = json.loads(r["Payload"].read())
                if r.get("FunctionError"):
                    raise RuntimeError(f"{checkout}: {body}")
                return (time.perf_counter() - t0) * 1000

            cold = invoke()
            return cold, [invoke() for _ in range(warm)]
        finally:
            server.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkout", action="append", required=True, metavar="NAME=PATH[::FLAGS]")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--warm", type=int, default=30, help="warm invocations per round")
    ap.add_argument("--assets", default=os.path.expanduser("~/.cache/slfaas/bench-assets"))
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    from slfaas.testing.tinymodels import make_adapter, make_base_model

    checkouts: list[tuple[str, Path, list[str]]] = []
    for spec in args.checkout:
        name, _, rest = spec.partition("=")
        path, _, flags = rest.partition("::")
        checkouts.append((name, Path(path).resolve(), flags.split() if flags else []))
    assets = Path(args.assets)
    base = assets / "base-tiny"
    if not (base / "config.json").is_file():
        make_base_model(base)
    adapter = assets / "adapter-tiny-cmp"
    if not (adapter / "adapter_model.safetensors").is_file():
        make_adapter(base, adapter, seed=300, base_model_name=str(base))
    for f in adapter.iterdir():   # as a code store holds it: readable by an isolated instance's uid
        f.chmod(0o644)
    cold: dict[str, list[float]] = {n: [] for n, _, _ in checkouts}
    warm: dict[str, list[float]] = {n: [] for n, _, _ in checkouts}
    for r in range(args.rounds):
        order = checkouts if r % 2 == 0 else list(reversed(checkouts))
        for name, path, extra in order:
            c, w = _round(path, extra, adapter, args.warm)
            cold[name].append(c)
            warm[name] += w
            print(f"round {r + 1}/{args.rounds} {name:10} cold {c:7.0f} ms, warm median {statistics.median(w):6.1f} ms",
                  flush=True)
    ref = checkouts[0][0]
    results = {}
    for name, path, extra in checkouts:
        results[name] = {
            "checkout": str(path), "server_flags": extra, "rounds": args.rounds,
            "cold_ms": [round(x, 1) for x in cold[name]], "cold_median_ms": round(statistics.median(cold[name]), 1),
            "warm_median_ms": round(statistics.median(warm[name]), 2), "warm_samples": len(warm[name]),
            "cold_ratio": round(statistics.median(cold[name]) / statistics.median(cold[ref]), 3),
            "warm_ratio": round(statistics.median(warm[name]) / statistics.median(warm[ref]), 3)}
    print()
    print(f"{'checkout':10} {'cold median':>12} {'warm median':>12} {'cold ratio':>11} {'warm ratio':>11}")
    for name, r in results.items():
        print(f"{name:10} {r['cold_median_ms']:10.0f}ms {r['warm_median_ms']:10.1f}ms {r['cold_ratio']:10.3f}× "
              f"{r['warm_ratio']:10.3f}×")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
