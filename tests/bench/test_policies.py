"""Policies as server configurations: each one's flags, function settings and billing, the
same common settings for all, and what happens where the server lacks a feature."""
from __future__ import annotations

import pytest

from slfaas.bench.errors import TraceError
from slfaas.bench.policies import (POLICIES, CommonSettings, ServerFeatures, make_policy, parse_policies)

COMMON = CommonSettings(device="cuda", keep_alive_s=120.0, max_instances=48, memory_mb=16384, instance_gpu_mb=4096,
                        max_batch_size=8, slo_ms=2000.0, server_args=("--insecure-sandbox",))


def _opt(args: tuple[str, ...], name: str) -> list[str]:
    return [args[i + 1] for i, a in enumerate(args) if a == name]


def test_every_policy_shares_the_common_settings() -> None:
    for name in POLICIES:
        p = make_policy(name, COMMON, ServerFeatures())
        assert _opt(p.server_args, "--device") == ["cuda"] and _opt(p.server_args, "--max-instances") == ["48"]
        assert _opt(p.server_args, "--instance-gpu-mb") == ["4096"] and "--insecure-sandbox" in p.server_args
        assert len(_opt(p.server_args, "--keep-alive-s")) == 1   # one value, never overridden by a second
    keep = {n: _opt(make_policy(n, COMMON, ServerFeatures()).server_args, "--keep-alive-s")[0] for n in POLICIES}
    assert keep == {"serverlesslora": "120", "no-sharing": "120", "serverlessllm-like": "120", "serverful": "86400",
                    "serverlesslora-cobatched": "120"}


def test_a_sized_pool_goes_to_serverlesslora_alone_with_a_budget_that_holds_it() -> None:
    from dataclasses import replace
    sized = replace(COMMON, prewarmed=16)
    lora = make_policy("serverlesslora", sized, ServerFeatures(slo_scheduler=True)).server_args
    assert _opt(lora, "--prewarm-min") == ["16"] and _opt(lora, "--prewarm-budget-mb") == [str(16 * 4096)]
    for name in POLICIES[1:]:   # the baselines' command lines do not depend on it
        assert make_policy(name, sized, ServerFeatures()).server_args == make_policy(name, COMMON,
                                                                                     ServerFeatures()).server_args
    with pytest.raises(TraceError, match="pre-warmed"):
        replace(COMMON, prewarmed=65)


def test_baselines_hold_private_backbones_one_request_at_a_time_with_nothing_prewarmed() -> None:
    for name, mode in (("no-sharing", "private-checkpoint"), ("serverlessllm-like", "private-host-cache")):
        p = make_policy(name, COMMON, ServerFeatures())
        assert _opt(p.server_args, "--backbone") == [mode] and p.billing == "container"
        assert _opt(p.server_args, "--prewarm-min") == ["0"] and _opt(p.server_args, "--prewarm-budget-mb") == ["0"]
        assert p.function_env == {"SLFAAS_MAX_BATCH_SIZE": "1"} and p.complete and not p.provisioned
        assert not p.prewarms


def test_serverlesslora_batches_and_takes_the_slo_scheduler_where_there_is_one() -> None:
    plain = make_policy("serverlesslora", COMMON, ServerFeatures())
    assert "--backbone" not in plain.server_args and "--prewarm-min" not in plain.server_args   # the default server
    assert plain.function_env == {"SLFAAS_MAX_BATCH_SIZE": "8"} and plain.billing == "per-request" and plain.prewarms
    assert any("--scheduler slo" in n for n in plain.notes)
    slo = make_policy("serverlesslora", COMMON, ServerFeatures(slo_scheduler=True))
    assert _opt(slo.server_args, "--scheduler") == ["slo"] and slo.notes == ()
    assert slo.function_env == {"SLFAAS_MAX_BATCH_SIZE": "8", "SLFAAS_TTFT_SLO_MS": "2000"}


def test_baselines_queue_nothing_on_a_node_with_the_slo_scheduler() -> None:
    features = ServerFeatures(slo_scheduler=True)
    for name in ("no-sharing", "serverlessllm-like"):
        assert _opt(make_policy(name, COMMON, features).server_args, "--scheduler") == ["fcfs"]
        assert "--scheduler" not in make_policy(name, COMMON, ServerFeatures()).server_args


def test_serverful_is_always_on_and_says_when_shared_execution_is_missing() -> None:
    assert _opt(make_policy("serverful", COMMON, ServerFeatures(shared_execution=True, shared_batch_size=True))
                .server_args, "--shared-batch-size") == ["8"]
    full = make_policy("serverful", COMMON, ServerFeatures(shared_execution=True))
    assert full.provisioned and full.complete and full.billing == "whole-device"
    assert full.function_env == {"SLFAAS_MAX_BATCH_SIZE": "8", "SLFAAS_SHARED_EXECUTION": "1"}
    missing = make_policy("serverful", COMMON, ServerFeatures())
    assert not missing.complete and "SLFAAS_SHARED_EXECUTION" not in missing.function_env
    assert missing.notes[0].startswith("INCOMPLETE") and missing.describe()["complete"] is False


def test_cobatched_serverlesslora_opts_every_function_into_shared_execution_billed_per_request() -> None:
    features = ServerFeatures(slo_scheduler=True, shared_execution=True, shared_batch_size=True)
    p = make_policy("serverlesslora-cobatched", COMMON, features)
    assert p.billing == "per-request" and p.provisioned and p.complete and not p.prewarms
    assert p.function_env == {"SLFAAS_MAX_BATCH_SIZE": "8", "SLFAAS_SHARED_EXECUTION": "1", "SLFAAS_TTFT_SLO_MS": "2000"}
    assert _opt(p.server_args, "--shared-batch-size") == ["8"] and _opt(p.server_args, "--scheduler") == ["slo"]
    assert _opt(p.server_args, "--keep-alive-s") == ["120"] and _opt(p.server_args, "--prewarm-min") == ["0"]
    missing = make_policy("serverlesslora-cobatched", COMMON, ServerFeatures())
    assert not missing.complete and "SLFAAS_SHARED_EXECUTION" not in missing.function_env
    assert missing.notes[0].startswith("INCOMPLETE")


def test_bad_policy_lists_and_settings_are_one_line_errors() -> None:
    assert parse_policies(" serverful , no-sharing") == ("serverful", "no-sharing")
    for text, message in (("", "unknown policy"), ("lambda", "unknown policy lambda"),
                          ("serverful,serverful", "named twice")):
        with pytest.raises(TraceError, match=message):
            parse_policies(text)
    with pytest.raises(TraceError, match="keep-alive must be >= 0"):
        CommonSettings(keep_alive_s=-1)
