"""Memory benchmark: N warm instances of N adapters on ONE shared backbone.

Starts a real `slfaas server` subprocess, deploys adapters through boto3, invokes each once
so every instance is warm, and reads each instance's PSS from /proc/PID/smaps_rollup (PSS
splits shared pages among the processes mapping them, so a shared backbone is counted once).

Checks the issue's bound: sum(PSS of N instances) < 1.5 × backbone bytes + N × (overhead of
one instance), where overhead = PSS(1 instance) − backbone bytes, and prints what N private
copies would cost instead.

    python bench/memory_pss.py [--instances 8] [--sandbox process|docker] [--json out.json]

With ``--sandbox docker`` every instance is a container (`slfaas node build-image` first); the
PIDs are the runtimes' host PIDs, so the same /proc accounting applies.
"""
# No ``from __future__ import annotations``: tests load this file by path, without a
# sys.modules entry, and dataclasses cannot resolve string annotations then.
import argparse
import json
import os
import re
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from slfaas.testing.serverproc import ServerProcess


def pss_kb(pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/smaps_rollup") as fh:
        for line in fh:
            m = re.match(r"^(\w+):\s+(\d+) kB", line)
            if m:
                out[m.group(1)] = int(m.group(2))
    return out


def backbone_mapping_kb(pid: int) -> dict[str, int]:
    """Rss/Pss of the mappings of the shared backbone image (a memfd named slfaas-*)."""
    out = {"Rss": 0, "Pss": 0}
    current = False
    with open(f"/proc/{pid}/smaps") as fh:
        for line in fh:
            if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
                current = "memfd:slfaas-" in line
            elif current:
                m = re.match(r"^(Rss|Pss):\s+(\d+) kB", line)
                if m:
                    out[m.group(1)] += int(m.group(2))
    return out


@dataclass(frozen=True)
class MemoryResult:
    backbone_mb: float
    instances: int
    pss_one_mb: float
    overhead_one_mb: float
    pss_sum_mb: float
    bound_mb: float
    rss_sum_mb: float
    backbone_pss_sum_mb: float
    backbone_rss_sum_mb: float
    private_copies_mb: float
    per_instance_pss_mb: list[float]
    holds: bool
    sandbox: str = "process"


def _instance_pids(url: str) -> dict[str, int]:
    from slfaas.client import api
    return {i["function_name"]: i["pid"] for i in api(url, "GET", "/slfaas/v1/node")["Instances"]}


def measure(assets: Path, n: int, log=print, sandbox: str = "process") -> MemoryResult:
    from slfaas.client import api, lambda_client, zip_adapter
    from slfaas.testing.tinymodels import MEDIUM, make_adapter, make_base_model

    base = assets / "base-medium"
    if not (base / "config.json").is_file():
        log(f"building a {MEDIUM} random Llama in {base} ...")
        make_base_model(base, shape=MEDIUM)
    adapters = []
    for k in range(n):
        out = assets / f"adapter-medium-{k}"
        if not (out / "adapter_model.safetensors").is_file():
            make_adapter(base, out, seed=100 + k, base_model_name=str(base))
        adapters.append(out)
    backbone_bytes = sum(p.stat().st_size for p in base.glob("*.safetensors"))

    with tempfile.TemporaryDirectory(prefix="slfaas-mem-") as tmp:
        server = ServerProcess(Path(tmp), "--keep-alive-s", "3600", "--log-level", "warning", "--sandbox", sandbox)
        try:
            client = lambda_client(server.url)
            event = json.dumps({"prompt": "hello world", "max_tokens": 4, "temperature": 0}).encode()
            for k, adapter in enumerate(adapters):
                name = f"mem-{k}"
                client.create_function(FunctionName=name, Runtime="slfaas-lora", Role="arn:aws:iam::0:role/x",
                                       Code={"ZipFile": zip_adapter(adapter)}, Timeout=300)
                client.get_waiter("function_active_v2").wait(FunctionName=name,
                                                             WaiterConfig={"Delay": 0.5, "MaxAttempts": 600})
                t0 = time.perf_counter()
                resp = client.invoke(FunctionName=name, Payload=event)
                body = json.loads(resp["Payload"].read())
                if resp.get("FunctionError"):
                    raise RuntimeError(f"{name}: {body}")
                log(f"instance {k + 1}/{n} warm (cold start {time.perf_counter() - t0:.1f} s)")
                if k == 0:
                    time.sleep(1)
                    pid = _instance_pids(server.url)[name]
                    pss_one = pss_kb(pid)["Pss"] * 1024
                    # other processes (a pre-warmed runtime waiting in the pool) may map the
                    # backbone too: count this instance's own memory plus one whole backbone
                    own_one = pss_one - backbone_mapping_kb(pid)["Pss"] * 1024
            time.sleep(1)
            pids = _instance_pids(server.url)
            assert len(pids) == n, pids
            rollups = [pss_kb(pid) for pid in pids.values()]
            mappings = [backbone_mapping_kb(pid) for pid in pids.values()]
            node = api(server.url, "GET", "/slfaas/v1/node")
            assert len(node["Backbones"]) == 1, "the backbone must be loaded once"
        finally:
            server.close()

    mb = 1e6
    overhead_one = own_one
    pss_sum = sum(r["Pss"] for r in rollups) * 1024
    bound = 1.5 * backbone_bytes + n * overhead_one
    return MemoryResult(
        backbone_mb=backbone_bytes / mb, instances=n, pss_one_mb=(own_one + backbone_bytes) / mb, overhead_one_mb=overhead_one / mb,
        pss_sum_mb=pss_sum / mb, bound_mb=bound / mb, rss_sum_mb=sum(r["Rss"] for r in rollups) * 1024 / mb,
        backbone_pss_sum_mb=sum(m["Pss"] for m in mappings) * 1024 / mb,
        backbone_rss_sum_mb=sum(m["Rss"] for m in mappings) * 1024 / mb,
        # without sharing every instance would hold its own copy on top of what it holds now
        private_copies_mb=(pss_sum + (n - 1) * backbone_bytes) / mb, per_instance_pss_mb=[round(r["Pss"] * 1024 / mb, 1) for r in rollups],
        holds=pss_sum < bound, sandbox=sandbox)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--instances", type=int, default=8)
    ap.add_argument("--assets", default=os.path.expanduser("~/.cache/slfaas/bench-assets"))
    ap.add_argument("--sandbox", default="process", choices=["process", "docker"],
                    help="instance isolation of the measured server (default %(default)s)")
    ap.add_argument("--json", help="write the result here")
    args = ap.parse_args()
    r = measure(Path(args.assets), args.instances, sandbox=args.sandbox)
    print()
    print(f"sandbox                              {r.sandbox:>9}")
    print(f"backbone (fp32 safetensors)          {r.backbone_mb:9.1f} MB")
    print(f"PSS of 1 instance                    {r.pss_one_mb:9.1f} MB  (overhead beyond backbone "
          f"{r.overhead_one_mb:.1f} MB)")
    print(f"sum of PSS, {r.instances} instances              {r.pss_sum_mb:9.1f} MB")
    print(f"bound 1.5×backbone + {r.instances}×overhead       {r.bound_mb:9.1f} MB  -> {'HOLDS' if r.holds else 'VIOLATED'}")
    print(f"sum of RSS, {r.instances} instances              {r.rss_sum_mb:9.1f} MB  (counts shared pages in every process)")
    print(f"backbone mapping: sum of PSS         {r.backbone_pss_sum_mb:9.1f} MB  (one copy, split {r.instances} ways; "
          f"sum of its RSS {r.backbone_rss_sum_mb:.1f} MB)")
    print(f"same instances without sharing       {r.private_copies_mb:9.1f} MB  (+{r.instances - 1} backbone copies)")
    print(f"saving vs private copies             {1 - r.pss_sum_mb / r.private_copies_mb:9.1%}")
    if args.json:
        Path(args.json).write_text(json.dumps(asdict(r), indent=2))
    return 0 if r.holds else 1


if __name__ == "__main__":
    sys.exit(main())
