"""The replay as a library: ``build_workload`` once (slice, function mapping, capped lengths,
prompts), then ``replay`` it against a server, as many times as there are server
configurations to compare; each run returns a frozen ``ReplayResult``."""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from slfaas.bench.errors import TraceError
from slfaas.bench.prompts import PromptBuilder, load_tokenizer, model_info
from slfaas.bench.records import RequestRecord, join_server_records
from slfaas.bench.replayer import Boto3Sender, ReplayRun, Sender, WorkItem, run_open_loop
from slfaas.bench.summary import ReplaySummary, summarize
from slfaas.bench.synthetic import ArrivalProcess, synthetic_trace
from slfaas.bench.trace import Trace, read_azure_csv
from slfaas.bench.workload import LengthCaps, Popularity, function_names, plan_requests

Progress = Callable[[str, int], Callable[[int], None]]   # (what, total) → advance(n)


@dataclass(frozen=True)
class WorkloadSpec:
    trace_path: Path
    n_functions: int
    popularity: str = "zipf:1.0"
    model_dir: Path | None = None      # base model: tokenizer and context window
    start_s: float = 0.0               # slice of the trace, in trace seconds
    duration_s: float | None = None
    max_requests: int | None = None
    synthetic: str | None = None       # poisson:RATE | gamma:RATE:CV (lengths drawn from the trace)
    max_prompt_tokens: int | None = None
    max_output_tokens: int | None = None
    function_prefix: str = "replay"
    seed: int = 0

    def validate(self) -> None:
        """Raise TraceError for options that cannot be replayed, before anything is read or sent."""
        Popularity.parse(self.popularity)
        function_names(self.n_functions, self.function_prefix)
        LengthCaps(self.max_prompt_tokens, self.max_output_tokens)
        if self.synthetic:
            ArrivalProcess.parse(self.synthetic)


@dataclass(frozen=True)
class Workload:
    spec: WorkloadSpec
    source: str                          # the trace or synthetic process it came from
    functions: tuple[str, ...]
    items: tuple[WorkItem, ...]
    context_tokens: int | None
    prompt_misses: int                   # prompts the tokenizer could not build to the exact count

    def describe(self) -> dict[str, Any]:
        spec = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self.spec).items()}
        last = self.items[-1].request.arrival_s if self.items else 0.0
        return {"spec": spec, "source": self.source, "functions": list(self.functions),
                "requests": len(self.items), "span_s": last, "context_tokens": self.context_tokens,
                "prompt_tokens": sum(i.prompt_tokens for i in self.items),
                "output_tokens": sum(i.request.output_tokens for i in self.items),
                "prompt_misses": self.prompt_misses}


def load_slice(spec: WorkloadSpec) -> Trace:
    trace = read_azure_csv(spec.trace_path)
    if spec.synthetic:
        if spec.duration_s is None:
            raise TraceError("--synthetic needs --duration (seconds of arrivals to generate)")
        if spec.start_s:
            raise TraceError("--start picks a slice of the trace's own arrivals; it does not apply to --synthetic")
        trace = synthetic_trace(ArrivalProcess.parse(spec.synthetic), spec.duration_s, trace, spec.seed)
        return trace.slice(0.0, None, spec.max_requests)
    return trace.slice(spec.start_s, spec.duration_s, spec.max_requests)


def build_workload(spec: WorkloadSpec, progress: Progress | None = None, trace: Trace | None = None) -> Workload:
    """Everything a replay sends, decided before the clock starts (prompt building is not
    free: it must not delay requests). ``trace``: the slice, if already loaded."""
    spec.validate()
    if spec.model_dir is None:
        raise TraceError("the workload needs the base model's directory (its tokenizer builds the prompts)")
    popularity = Popularity.parse(spec.popularity)
    functions = function_names(spec.n_functions, spec.function_prefix)
    trace = trace if trace is not None else load_slice(spec)
    info = model_info(spec.model_dir)
    caps = LengthCaps(spec.max_prompt_tokens, spec.max_output_tokens, info.context_tokens)
    planned = plan_requests(trace, functions, popularity, caps, spec.seed)
    builder = PromptBuilder(load_tokenizer(spec.model_dir), seed=spec.seed)
    advance = progress("building prompts", len(planned)) if progress else (lambda n: None)
    items, misses = [], 0
    for req in planned:
        text, count = builder.build(req.prompt_tokens, salt=req.index)
        misses += count != req.prompt_tokens
        items.append(WorkItem(req, text, count))
        advance(1)
    return Workload(spec, trace.source, functions, tuple(items), info.context_tokens, misses)


@dataclass(frozen=True)
class ReplayOptions:
    endpoint: str
    speedup: float = 1.0
    slo_ms: float | None = None
    max_in_flight: int = 256
    read_timeout_s: float = 900.0
    join_server_records: bool = True    # cold starts and server token counts come from there
    retry_throttled_s: float = 0.0       # wait out 429s up to this long after a request's arrival

    def __post_init__(self) -> None:
        if not math.isfinite(self.speedup) or self.speedup <= 0:
            raise TraceError(f"--speedup must be a number > 0, got {self.speedup}")
        if self.slo_ms is not None and not (math.isfinite(self.slo_ms) and self.slo_ms > 0):
            raise TraceError(f"--slo-ms must be a number > 0, got {self.slo_ms}")
        if self.max_in_flight < 1:
            raise TraceError(f"--max-in-flight must be at least 1, got {self.max_in_flight}")
        if not (math.isfinite(self.retry_throttled_s) and self.retry_throttled_s >= 0):
            raise TraceError(f"--retry-throttled-s must be a number >= 0, got {self.retry_throttled_s}")
        if not self.read_timeout_s > 0:
            raise TraceError(f"the read timeout must be > 0 s, got {self.read_timeout_s}")


@dataclass(frozen=True)
class ReplayResult:
    workload: dict[str, Any]          # Workload.describe()
    options: ReplayOptions
    records: tuple[RequestRecord, ...]
    summary: ReplaySummary
    started_unix: float
    wall_s: float
    extra: dict[str, Any] = field(default_factory=dict)   # a caller's labels (e.g. the policy)

    def summary_json(self) -> dict[str, Any]:
        return {"summary": self.summary.to_json(), "workload": self.workload, "options": asdict(self.options),
                "started_unix": self.started_unix, "wall_s": self.wall_s, **self.extra}

    def write(self, out_dir: Path | str) -> tuple[Path, Path]:
        """``requests.jsonl`` (one record per line, slice order) and ``summary.json``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        records_path, summary_path = out / "requests.jsonl", out / "summary.json"
        with records_path.open("w") as fh:
            for r in self.records:
                fh.write(json.dumps(r.to_json()) + "\n")
        summary_path.write_text(json.dumps(self.summary_json(), indent=2) + "\n")
        return records_path, summary_path


def replay(workload: Workload, options: ReplayOptions, *, sender: Sender | None = None,
           progress: Progress | None = None) -> ReplayResult:
    """Replay ``workload`` against ``options.endpoint`` (its functions must exist)."""
    from slfaas.bench.server import check_functions, fetch_invocations

    check_functions(options.endpoint, workload.functions)
    send = sender or Boto3Sender(options.endpoint, options.max_in_flight, options.read_timeout_s,
                                 retry_throttled_s=options.retry_throttled_s)
    advance = progress("replaying", len(workload.items)) if progress else None
    run: ReplayRun = run_open_loop(workload.items, send, speedup=options.speedup,
                                   max_in_flight=options.max_in_flight,
                                   on_done=(lambda _r: advance(1)) if advance else None)
    records = run.records
    if options.join_server_records:
        ids = [r.request_id for r in records if r.request_id]
        server = fetch_invocations(options.endpoint, workload.functions, ids)
        records = join_server_records(records, server)
    return ReplayResult(workload.describe(), options, records, summarize(records, options.slo_ms),
                        run.started_unix, run.wall_s)


def replay_trace(spec: WorkloadSpec, options: ReplayOptions, progress: Progress | None = None) -> ReplayResult:
    """``build_workload`` then ``replay``: one call."""
    t0 = time.monotonic()
    workload = build_workload(spec, progress)
    prepare_s = time.monotonic() - t0
    return replace(replay(workload, options, progress=progress), extra={"prepare_s": round(prepare_s, 3)})
