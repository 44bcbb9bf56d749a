"""Time to first token over InvokeWithResponseStream vs. the same buffered Invoke (client side).

Starts a real `slfaas server` (CPU, process sandboxes), deploys one random LoRA adapter of a
tiny Llama through boto3, warms the instance, then alternates, for each round, a buffered
``invoke`` and an ``invoke_with_response_stream`` of the same greedy 64-token generation.
Measured in the client with boto3, from the call to:
  - buffered: the full response read (what a caller of Invoke waits before seeing any text)
  - streamed: the first PayloadChunk event (TTFT) and the InvokeComplete event (total)
The acceptance bound is median(TTFT) / median(buffered) < 0.40.

    python bench/streaming_ttft.py [--rounds 20] [--max-tokens 64] [--shape tiny|medium] [--json out.json]
"""
import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from slfaas.testing.serverproc import ServerProcess


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--shape", choices=["tiny", "medium"], default="tiny",
                    help="tiny: the test model (64 hidden, 2 layers); medium: 768 hidden, 8 layers")
    ap.add_argument("--json", help="write the raw measurements here")
    args = ap.parse_args()

    import boto3
    from botocore.config import Config

    from slfaas.client import zip_adapter
    from slfaas.testing.tinymodels import MEDIUM, TINY, make_adapter, make_base_model

    shape = TINY if args.shape == "tiny" else MEDIUM
    with tempfile.TemporaryDirectory(prefix="slfaas-ttft-") as tmp:
        root = Path(tmp)
        print(f"[1/4] making a {args.shape} base model and a LoRA adapter ...", flush=True)
        base = make_base_model(root / "base", shape=shape)
        adapter = make_adapter(base, root / "adapter", seed=1, base_model_name=str(base))
        server = ServerProcess(root / "data", "--keep-alive-s", "3600", "--device", "cpu")
        try:
            lam = boto3.client("lambda", endpoint_url=server.url, region_name="us-east-1",
                               aws_access_key_id="bench", aws_secret_access_key="bench",
                               config=Config(retries={"total_max_attempts": 1}, read_timeout=300))
            print(f"[2/4] deploying through boto3 at {server.url} ...", flush=True)
            lam.create_function(FunctionName="ttft", Runtime="slfaas-lora", Role="arn:aws:iam::000000000000:role/b",
                                Code={"ZipFile": zip_adapter(adapter)})
            lam.get_waiter("function_active_v2").wait(FunctionName="ttft", WaiterConfig={"Delay": 0.2,
                                                                                         "MaxAttempts": 600})
            # a stop string that never occurs keeps EOS-free greedy runs at exactly max_tokens
            event = json.dumps({"prompt": "the quick brown fox", "max_tokens": args.max_tokens, "temperature": 0,
                                "stop": ["\u2603\u2603"]})
            print("[3/4] warming the instance ...", flush=True)
            for _ in range(3):
                lam.invoke(FunctionName="ttft", Payload=event)["Payload"].read()
                for _ev in lam.invoke_with_response_stream(FunctionName="ttft", Payload=event)["EventStream"]:
                    pass
            print(f"[4/4] {args.rounds} rounds of buffered invoke + streamed invoke ...", flush=True)
            buffered, ttft, streamed_total, tokens, chunks = [], [], [], [], []
            for _ in range(args.rounds):
                t0 = time.perf_counter()
                body = json.loads(lam.invoke(FunctionName="ttft", Payload=event)["Payload"].read())
                buffered.append(time.perf_counter() - t0)
                tokens.append(body["usage"]["completion_tokens"])
                t0 = time.perf_counter()
                first = None
                n = 0
                for ev in lam.invoke_with_response_stream(FunctionName="ttft", Payload=event)["EventStream"]:
                    if "PayloadChunk" in ev:
                        n += 1
                        if first is None:
                            first = time.perf_counter() - t0
                    elif "InvokeComplete" in ev and ev["InvokeComplete"].get("ErrorCode"):
                        raise RuntimeError(f"stream failed: {ev['InvokeComplete']}")
                streamed_total.append(time.perf_counter() - t0)
                ttft.append(first if first is not None else float("nan"))
                chunks.append(n)
        finally:
            server.close()

    med_b, med_t, med_s = statistics.median(buffered), statistics.median(ttft), statistics.median(streamed_total)
    ratio = med_t / med_b
    print(f"\ncompletion tokens per run: {sorted(set(tokens))}; PayloadChunk events per stream: median "
          f"{statistics.median(chunks):.0f}")
    print(f"{'client-side, ms':34} {'median':>8} {'p10':>8} {'p90':>8}")
    for label, values in (("buffered invoke (whole response)", buffered), ("streamed: first token (TTFT)", ttft),
                          ("streamed: InvokeComplete", streamed_total)):
        print(f"{label:34} {statistics.median(values) * 1000:8.1f} {_pct(values, 0.1) * 1000:8.1f} "
              f"{_pct(values, 0.9) * 1000:8.1f}")
    print(f"\nTTFT / buffered = {ratio:.3f}  (bound: < 0.40: {'holds' if ratio < 0.4 else 'FAILS'}); "
          f"streaming overhead on the total: {(med_s / med_b - 1) * 100:+.1f}%")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "rounds": args.rounds, "max_tokens": args.max_tokens, "shape": args.shape, "tokens": tokens,
            "buffered_s": buffered, "ttft_s": ttft, "streamed_total_s": streamed_total, "chunks": chunks,
            "ratio_median": ratio}, indent=1))
    return 0 if ratio < 0.4 else 1


if __name__ == "__main__":
    sys.exit(main())
