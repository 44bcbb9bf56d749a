"""``slfaas bench compare``: serving policies run for real on the same trace slice, each on a
fresh server started here, then one table, an HTML report and PNG plots."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from slfaas.cli.core import examples, output_option, ui
from slfaas.cli.ui import progress_bars

_TRACE = "bench/data/AzureLLMInferenceTrace_conv.csv"


@click.command("compare", epilog=examples(
    f"slfaas bench compare --trace {_TRACE} --functions 16 --adapters a/ --adapters b/ --duration 120 "
    "--slo-ms 2000 --device cuda --out results/compare",
    f"slfaas bench compare --policies serverlesslora,no-sharing --trace {_TRACE} --functions 4 "
    "--adapters ./lora --max-requests 20 --max-output-tokens 4 --server-arg=--insecure-sandbox --out /tmp/cmp"))
@click.option("--policies", default="serverlesslora,no-sharing,serverlessllm-like,serverful", show_default=True,
              help="comma-separated: serverlesslora, no-sharing, serverlessllm-like, serverful, "
                   "serverlesslora-cobatched (slfaas with every function in shared execution)")
@click.option("--trace", "trace_path", required=True, type=click.Path(path_type=Path),
              help="trace CSV (TIMESTAMP,ContextTokens,GeneratedTokens)")
@click.option("--functions", "n_functions", required=True, type=int, help="number of functions to spread requests over")
@click.option("--adapters", "adapters", required=True, multiple=True, type=click.Path(path_type=Path),
              help="adapter directories the functions are deployed from (repeatable; cycled)")
@click.option("--popularity", default="zipf:1.0", show_default=True, help="zipf:S or uniform (seeded)")
@click.option("--speedup", default=1.0, show_default=True, type=float, help="replay X times faster than the trace")
@click.option("--duration", "duration_s", type=float, help="seconds of trace to replay (trace time)")
@click.option("--start", "start_s", default=0.0, show_default=True, type=float, help="where the slice starts, trace seconds")
@click.option("--max-requests", type=int, help="replay at most this many requests of the slice")
@click.option("--synthetic", help="poisson:RATE or gamma:RATE:CV arrivals for --duration s (lengths from --trace)")
@click.option("--slo-ms", type=float, help="TTFT target for SLO attainment (and the SLO scheduler, where present)")
@click.option("--max-prompt-tokens", type=int, help="cap prompt lengths (also capped to the model's context)")
@click.option("--max-output-tokens", type=int, help="cap output lengths")
@click.option("--model", "model_dir", type=click.Path(path_type=Path), help="base model directory (default: the adapters' base)")
@click.option("--function-prefix", default="replay", show_default=True, help="functions are PREFIX-0 .. PREFIX-{N-1}")
@click.option("--seed", default=0, show_default=True, type=int, help="seed of the function mapping, prompts, arrivals")
@click.option("--device", default="cpu", show_default=True, help="every server's --device (cpu, cuda, cuda:N)")
@click.option("--keep-alive-s", default=60.0, show_default=True, type=float, help="every server's keep-alive")
@click.option("--max-instances", default=32, show_default=True, type=int, help="every server's instance limit")
@click.option("--memory-mb", default=2048, show_default=True, type=int, help="every function's MemorySize")
@click.option("--max-batch-size", default=8, show_default=True, type=int, help="SLFAAS_MAX_BATCH_SIZE of batching policies")
@click.option("--instance-gpu-mb", default=1536, show_default=True, type=int,
              help="every server's --instance-gpu-mb (private backbones are added in their modes)")
@click.option("--retry-throttled-s", default=600.0, show_default=True, type=float,
              help="a request refused with a 429 is sent again until this long after its arrival (waits for room)")
@click.option("--max-in-flight", default=256, show_default=True, type=int, help="client threads and HTTP connections")
@click.option("--sample-interval-s", default=0.5, show_default=True, type=float, help="node timeline sampling period")
@click.option("--prices", "prices_file", type=click.Path(path_type=Path), help="price sheet for every server and the costs")
@click.option("--server-arg", "server_args", multiple=True,
              help="an extra `slfaas server` argument for every policy (repeatable, e.g. --server-arg=--insecure-sandbox)")
@click.option("--work-dir", type=click.Path(path_type=Path), help="the servers' data dirs (default: a temp dir)")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path),
              help="write comparison.json, table.md, report.html, PNGs and each policy's records here")
@click.option("--window-only", is_flag=True,
              help="bill the serverless baselines' containers up to the window's end only (a lower bound) instead "
                   "of waiting, after the window, for their keep-alive to end them")
@click.option("--merge", is_flag=True,
              help="add these policies to the comparison already in --out (same slice and settings): "
                   "one comparison run as several commands")
@output_option
@click.pass_context
def compare_cmd(ctx: click.Context, policies: str, trace_path: Path, n_functions: int, adapters: tuple[Path, ...],
                popularity: str, speedup: float, duration_s: float | None, start_s: float, max_requests: int | None,
                synthetic: str | None, slo_ms: float | None, max_prompt_tokens: int | None,
                max_output_tokens: int | None, model_dir: Path | None, function_prefix: str, seed: int, device: str,
                keep_alive_s: float, max_instances: int, memory_mb: int, max_batch_size: int, instance_gpu_mb: int,
                retry_throttled_s: float, max_in_flight: int, sample_interval_s: float, prices_file: Path | None,
                server_args: tuple[str, ...], work_dir: Path | None, out_dir: Path, window_only: bool, merge: bool,
                output: str) -> None:
    """Run each policy on a fresh server (same functions, caps, keep-alive and SLO) against
    the same slice, and compare TTFT, SLO attainment, cold starts and cost."""
    from slfaas.bench import BenchError, ReplayOptions, WorkloadSpec, build_workload, load_slice
    from slfaas.bench.server import adapter_base_model
    from slfaas.bench.compare import CompareSpec, run_comparison
    from slfaas.bench.compare_report import check_mergeable, savings_in, write_comparison
    from slfaas.bench.compare_table import markdown_table
    from slfaas.bench.policies import CommonSettings, parse_policies

    quiet = ui(ctx).quiet

    def say(message: str) -> None:
        if not quiet:
            click.echo(message, err=True)
    try:
        names = parse_policies(policies)
        ReplayOptions("http://unused", speedup, slo_ms, max_in_flight, retry_throttled_s=retry_throttled_s)
        common = CommonSettings(device, keep_alive_s, max_instances, memory_mb, 900, instance_gpu_mb, max_batch_size,
                                slo_ms=slo_ms, server_args=tuple(server_args), bill_keep_alive=not window_only)
        model_dir = model_dir or adapter_base_model(adapters)
        if model_dir is None:
            raise BenchError("cannot tell the adapters' base model (its tokenizer builds the prompts): give --model DIR")
        spec = WorkloadSpec(trace_path, n_functions, popularity, model_dir, start_s, duration_s, max_requests,
                            synthetic, max_prompt_tokens, max_output_tokens, function_prefix, seed)
        spec.validate()
        trace = load_slice(spec)
        with progress_bars(quiet) as progress:
            workload = build_workload(spec, progress, trace)
            if merge:
                check_mergeable(out_dir, workload.describe(), common)
            result = run_comparison(workload, CompareSpec(
                names, tuple(adapters), common, speedup, max_in_flight, retry_throttled_s, sample_interval_s,
                prices_file, work_dir), progress=progress, say=say)
    except BenchError as exc:
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    try:
        paths = write_comparison(result, out_dir, merge_existing=merge)
    except BenchError as exc:
        raise click.ClickException(str(exc)) from None
    say("wrote " + ", ".join(str(p) for p in paths.values()))
    note = out_dir / "png_note.txt"
    if note.is_file():
        say("note: " + note.read_text().strip())
    data = json.loads(paths["json"].read_text())
    if output == "json":
        click.echo(json.dumps({"rows": data["rows"], **savings_in(data)}, indent=2))
    else:
        click.echo(markdown_table(data["rows"]), nl=False)
