"""``slfaas bench``: replay a trace against a running server (``slfaas bench replay``), or compare
serving policies on one slice, each on a server of its own (``slfaas bench compare``)."""
from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import click

from slfaas.bench import (BenchError, ReplayOptions, ReplayResult, WorkloadSpec, build_workload, deploy_functions,
                          function_names, load_slice, replay, resolve_model_dir)
from slfaas.cli.bench_compare import compare_cmd
from slfaas.cli.core import SlfaasGroup, endpoint_option, endpoint_url, examples, output_option, ui
from slfaas.cli.ui import progress_bars

LAG_WARNING_MS = 100.0
_TRACE = "bench/data/AzureLLMInferenceTrace_conv.csv"


@click.group(name="bench", cls=SlfaasGroup, epilog=examples(
    f"slfaas bench replay --trace {_TRACE} --functions 8 --speedup 10 --duration 60",
    "slfaas bench replay --trace T.csv --functions 4 --synthetic gamma:2:3 --duration 30 --slo-ms 1000"))
@endpoint_option
def bench(endpoint: str | None) -> None:
    """Benchmarks against a running slfaas server."""


def _summary_table(result: ReplayResult) -> None:
    from rich.console import Console
    from rich.table import Table

    s = result.summary

    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:,.1f}"

    table = Table(title=f"replay of {result.workload['source']} ({s.requests} requests)", show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("completed / errors", f"{s.completed} / {s.errors}")
    for code, n in s.errors_by_type:
        table.add_row(f"  {code}", str(n))
    table.add_row("TTFT p50 / p90 / p99 (ms)", " / ".join(ms(v) for v in (s.ttft_ms.p50, s.ttft_ms.p90, s.ttft_ms.p99)))
    table.add_row("E2E p50 / p99 (ms)", " / ".join(ms(v) for v in (s.e2e_ms.p50, s.e2e_ms.p99)))
    if s.slo_attainment is not None:
        table.add_row(f"SLO attainment (TTFT <= {s.slo_ms:g} ms)", f"{100 * s.slo_attainment:.1f}%")
    table.add_row("cold starts", "-" if s.cold_starts is None else str(s.cold_starts))
    if s.throttled:
        table.add_row("requests that waited out 429s", str(s.throttled))
    table.add_row("throughput (req/s, output tok/s)", f"{s.throughput_rps:.2f}, {s.output_tokens_per_s:.1f}")
    table.add_row("makespan (s)", f"{s.makespan_s:.2f}")
    table.add_row("client lag p99 (ms)", ms(s.client_lag_ms.p99))
    Console().print(table)


@bench.command("replay", epilog=examples(
    f"slfaas bench replay --trace {_TRACE} --functions 8 --popularity zipf:1.1 --speedup 10 --duration 60 "
    "--slo-ms 1000 --out results/",
    f"slfaas bench replay --trace {_TRACE} --functions 3 --deploy-adapters ./my-lora --max-requests 20",
    "slfaas bench replay --trace T.csv --functions 4 --synthetic poisson:5 --duration 30 -o json"))
@click.option("--trace", "trace_path", required=True, type=click.Path(path_type=Path),
              help="trace CSV (TIMESTAMP,ContextTokens,GeneratedTokens), e.g. bench/data/AzureLLMInferenceTrace_conv.csv")
@click.option("--functions", "n_functions", required=True, type=int, help="number of functions to spread requests over")
@click.option("--popularity", default="zipf:1.0", show_default=True, help="zipf:S or uniform (seeded)")
@click.option("--speedup", default=1.0, show_default=True, type=float, help="replay X times faster than the trace")
@click.option("--duration", "duration_s", type=float, help="seconds of trace to replay (trace time; wall time is this / speedup)")
@click.option("--start", "start_s", default=0.0, show_default=True, type=float, help="where the slice starts, trace seconds")
@click.option("--max-requests", type=int, help="replay at most this many requests of the slice")
@click.option("--synthetic", help="poisson:RATE or gamma:RATE:CV arrivals for --duration s (lengths drawn from --trace)")
@endpoint_option
@click.option("--slo-ms", type=float, help="TTFT target for SLO attainment")
@click.option("--max-prompt-tokens", type=int, help="cap prompt lengths (they are also capped to the model's context)")
@click.option("--max-output-tokens", type=int, help="cap output lengths")
@click.option("--model", "model_dir", type=click.Path(path_type=Path),
              help="base model directory (tokenizer, context); default: the adapters' base or the server's only model")
@click.option("--deploy-adapters", multiple=True, type=click.Path(path_type=Path),
              help="first create/update the N functions from these adapter directories (repeatable; cycled)")
@click.option("--function-prefix", default="replay", show_default=True, help="functions are PREFIX-0 .. PREFIX-{N-1}")
@click.option("--seed", default=0, show_default=True, type=int, help="seed of the function mapping, prompts, synthetic arrivals")
@click.option("--max-in-flight", default=256, show_default=True, type=int, help="client threads and HTTP connections")
@click.option("--retry-throttled-s", default=0.0, show_default=True, type=float,
              help="send a request refused with a 429 again (backoff) until this long after its arrival; "
                   "0: a throttle is its result")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), help="write requests.jsonl and summary.json here")
@output_option
@click.pass_context
def replay_cmd(ctx: click.Context, trace_path: Path, n_functions: int, popularity: str, speedup: float, duration_s: float | None,
               start_s: float, max_requests: int | None, synthetic: str | None, endpoint: str | None, slo_ms: float | None,
               max_prompt_tokens: int | None, max_output_tokens: int | None, model_dir: Path | None,
               deploy_adapters: tuple[Path, ...], function_prefix: str, seed: int, max_in_flight: int,
               retry_throttled_s: float, out_dir: Path | None, output: str) -> None:
    """Replay a trace's arrivals (open loop) through InvokeWithResponseStream and measure TTFT
    and end-to-end latency from each request's scheduled arrival."""
    endpoint = endpoint_url(ctx)
    try:
        options = ReplayOptions(endpoint, speedup, slo_ms, max_in_flight, retry_throttled_s=retry_throttled_s)
        spec = WorkloadSpec(trace_path, n_functions, popularity, model_dir, start_s, duration_s, max_requests,
                            synthetic, max_prompt_tokens, max_output_tokens, function_prefix, seed)
        spec.validate()
        names = function_names(n_functions, function_prefix)
        trace = load_slice(spec)     # a bad trace or an empty slice fails before the server is asked anything
        if model_dir is None:
            spec = replace(spec, model_dir=resolve_model_dir(endpoint, deploy_adapters))
        with progress_bars(ui(ctx).quiet) as progress:
            workload = build_workload(spec, progress, trace)
            if deploy_adapters:
                click.echo(f"deploying {len(names)} functions from {len(deploy_adapters)} adapter(s)...", err=True)
                deploy_functions(endpoint, names, deploy_adapters)
            result = replay(workload, options, progress=progress)
    except BenchError as exc:
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    if workload.prompt_misses:
        click.echo(f"warning: {workload.prompt_misses} prompts are not exactly their target length", err=True)
    lag = result.summary.client_lag_ms.max
    if lag is not None and lag > LAG_WARNING_MS:
        click.echo(f"warning: the client sent requests up to {lag:,.0f} ms late (latency still counts from "
                   f"the scheduled arrival); raise --max-in-flight or use a faster client machine", err=True)
    if out_dir is not None:
        records_path, summary_path = result.write(out_dir)
        click.echo(f"wrote {records_path} and {summary_path}", err=True)
    if output == "json":
        click.echo(json.dumps(result.summary_json(), indent=2))
    else:
        _summary_table(result)


bench.add_command(compare_cmd)

if __name__ == "__main__":
    bench.main(prog_name="slfaas bench")
