"""What a runtime inherits from the node's environment: the operator's GPU memory settings
(trim and pre-warm scratch) reach every runtime, pre-warmed ones included; nothing else of
the node's (its secrets) does."""
from __future__ import annotations

import pytest

from slfaas import runtime_contract as rc
from slfaas.gpu_node.lifecycle.runtime_env import node_environ


def test_gpu_memory_settings_pass_and_node_secrets_do_not(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(rc.ENV_PREWARM_KEEP_SCRATCH, "0")
    monkeypatch.setenv(rc.ENV_GPU_TRIM_IDLE_S, "30")
    monkeypatch.setenv(rc.ENV_CUDNN_SDPA, "1")
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "node-secret")
    env = node_environ()
    assert env[rc.ENV_PREWARM_KEEP_SCRATCH] == "0"
    assert env[rc.ENV_GPU_TRIM_IDLE_S] == "30"
    assert env[rc.ENV_CUDNN_SDPA] == "1"
    assert env["PYTORCH_CUDA_ALLOC_CONF"] == "expandable_segments:True"
    assert "AWS_SECRET_ACCESS_KEY" not in env
