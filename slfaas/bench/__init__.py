"""Trace replay against a running slfaas server (``slfaas bench replay``).

Library use, e.g. one workload replayed against several server configurations::

    from slfaas.bench import ReplayOptions, WorkloadSpec, build_workload, replay

    workload = build_workload(WorkloadSpec(trace_path=..., n_functions=16, model_dir=...,
                                           duration_s=120, max_output_tokens=256))
    result = replay(workload, ReplayOptions(endpoint=url, speedup=1.0, slo_ms=1000))
    result.summary.ttft_ms.p50, result.records[0].cold_start
    result.write(out_dir)   # requests.jsonl + summary.json
"""
from slfaas.bench.errors import BenchError, TraceError
from slfaas.bench.records import RequestRecord, join_server_records
from slfaas.bench.run import (ReplayOptions, ReplayResult, Workload, WorkloadSpec, build_workload, load_slice,
                              replay, replay_trace)
from slfaas.bench.server import deploy_functions, fetch_invocations, resolve_model_dir
from slfaas.bench.summary import Percentiles, ReplaySummary, summarize
from slfaas.bench.synthetic import ArrivalProcess, synthetic_trace
from slfaas.bench.trace import Trace, TraceRequest, read_azure_csv
from slfaas.bench.workload import LengthCaps, PlannedRequest, Popularity, function_names, plan_requests

__all__ = [
    "ArrivalProcess", "BenchError", "LengthCaps", "Percentiles", "PlannedRequest", "Popularity", "ReplayOptions",
    "ReplayResult", "ReplaySummary", "RequestRecord", "Trace", "TraceError", "TraceRequest", "Workload",
    "WorkloadSpec", "build_workload", "deploy_functions", "fetch_invocations", "function_names",
    "join_server_records", "load_slice", "plan_requests", "read_azure_csv", "replay", "replay_trace",
    "resolve_model_dir", "summarize", "synthetic_trace",
]
