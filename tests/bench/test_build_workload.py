"""build_workload end to end on the bundled trace with a small model's tokenizer and context:
the slice, the caps against the context, exact prompts, synthetic arrivals, determinism."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from slfaas.bench import TraceError, WorkloadSpec, build_workload, read_azure_csv

ROOT = Path(__file__).resolve().parents[2]
TRACE = ROOT / "bench" / "data" / "AzureLLMInferenceTrace_conv.csv"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from slfaas.testing.tinymodels import make_tokenizer

    out = tmp_path_factory.mktemp("model")
    (out / "config.json").write_text(json.dumps({"max_position_embeddings": 600}))
    make_tokenizer(out)
    return out


def test_trace_slice_capped_to_the_context(model_dir: Path) -> None:
    spec = WorkloadSpec(TRACE, 4, "zipf:1.2", model_dir, start_s=60.0, duration_s=10.0, max_output_tokens=200)
    w = build_workload(spec)
    trace = read_azure_csv(TRACE)
    expected = [r for r in trace.requests if 60.0 <= r.arrival_s < 70.0]
    assert len(w.items) == len(expected) > 0 and w.prompt_misses == 0 and w.context_tokens == 600
    for item, row in zip(w.items, expected):
        req = item.request
        assert req.arrival_s == pytest.approx(row.arrival_s - 60.0)
        assert req.output_tokens == min(row.output_tokens, 200)
        assert req.prompt_tokens == min(row.prompt_tokens, 600 - req.output_tokens)
        assert item.prompt_tokens == req.prompt_tokens
    assert {i.request.function for i in w.items} <= set(w.functions) == {"replay-0", "replay-1", "replay-2", "replay-3"}
    again = build_workload(spec)
    assert [(i.request, i.prompt) for i in again.items] == [(i.request, i.prompt) for i in w.items]
    described = json.loads(json.dumps(w.describe()))
    assert described["requests"] == len(w.items) and described["spec"]["trace_path"] == str(TRACE)


def test_synthetic_workload(model_dir: Path) -> None:
    spec = WorkloadSpec(TRACE, 2, "uniform", model_dir, duration_s=20.0, synthetic="gamma:4:2",
                        max_prompt_tokens=64, max_output_tokens=8, seed=3)
    w = build_workload(spec)
    assert 20 <= len(w.items) <= 160 and w.source.startswith("gamma:4:2 (lengths from")
    assert all(i.request.arrival_s < 20.0 and i.request.prompt_tokens <= 64 for i in w.items)
    assert [i.request for i in build_workload(spec).items] == [i.request for i in w.items]
    assert [i.request for i in build_workload(replace(spec, seed=4)).items] != [i.request for i in w.items]


def test_a_model_is_needed(model_dir: Path) -> None:
    with pytest.raises(TraceError, match="needs the base model's directory"):
        build_workload(WorkloadSpec(TRACE, 2))
