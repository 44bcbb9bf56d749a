"""Shared fixtures of the control-plane tests: FunctionService on a real registry and a fake node."""
from __future__ import annotations

import base64
import json
import threading
import time
from pathlib import Path

import pytest

from slfaas.faas.registry import Registry
from slfaas.faas.service import FunctionService
from slfaas.gpu_node.logs import FunctionLogs
from slfaas.gpu_node.streaming import ResponseStream
from slfaas.gpu_node.types import (BackboneInfo, FunctionSpec, IntegrityEvent, InvocationRequest, InvocationResult,
                                   LogChunk, NodeInfo, ProvisionedInfo)


class FakeNode:
    """A complete ``NodeApi`` for testing the control plane alone (mypy checks that it is one, in
    tests/architecture): prepare() blocks on ``gate``; invoke() echoes, after waiting while
    ``hold()`` holds it (a long invocation), until ``cancel()`` stops it as the node does (the
    instance killed); retire() is recorded; logs are the node's own per-function files
    (``function_logs``)."""

    def __init__(self, logs_root: Path):
        self.gate = threading.Event()
        self.gate.set()
        self.prepare_error: BaseException | None = None
        self.invoke_error: BaseException | None = None
        self.function_error: tuple[str, bytes] | None = None  # (error type, payload) to answer with
        self.prepared: list[FunctionSpec] = []
        self.invoked: list[InvocationRequest] = []
        self.retired: list[tuple[str, str | None]] = []
        self.provisioned: dict[tuple[str, str], tuple[FunctionSpec, int]] = {}
        self.provisioned_ready: int | None = None     # None: every provisioned instance is up at once
        self.provision_failure: tuple[str, int] | None = None   # (reason, consecutive failures)
        self.cancelled: list[str] = []
        self.function_logs = FunctionLogs(logs_root)
        self.max_instances = 1000
        self._held = False
        self._running: set[str] = set()
        self._cond = threading.Condition()

    def hold(self, held: bool = True) -> None:
        with self._cond:
            self._held = held
            self._cond.notify_all()

    def wait_running(self, n: int, timeout_s: float = 10) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: len(self._running) >= n, timeout_s)

    def prepare(self, function: FunctionSpec) -> BackboneInfo:
        if not self.gate.wait(10):
            raise AssertionError("test never released prepare()")
        if self.prepare_error is not None:
            raise self.prepare_error
        self.prepared.append(function)
        return BackboneInfo(str(function.base_model_path), "cpu", 1, 1, 0.0, 0.0, time.time())

    def invoke(self, request: InvocationRequest) -> InvocationResult:
        self.invoked.append(request)
        rid = request.request_id
        with self._cond:
            self._running.add(rid)
            self._cond.notify_all()
            if not self._cond.wait_for(lambda: not self._held or rid in self.cancelled, timeout=30):
                raise AssertionError("test never released invoke()")
            self._running.discard(rid)
        now = time.time()
        if rid in self.cancelled:
            payload = json.dumps({"errorMessage": "Runtime exited with error: signal: SIGKILL",
                                  "errorType": "Runtime.ExitError"}).encode()
            return InvocationResult(rid, payload, "Unhandled", "Runtime.ExitError", "inst-1", False, now, now,
                                    None, 0.0, 1.0)
        if self.invoke_error is not None:
            raise self.invoke_error
        if self.function_error is not None:
            etype, payload = self.function_error
            return InvocationResult(request.request_id, payload, "Unhandled", etype, "inst-1", False, now, now,
                                    None, 0.0, 1.0)
        body = json.dumps({"text": "ok", "echo": json.loads(request.payload),
                           "usage": {"prompt_tokens": 3, "completion_tokens": 5}, "metrics": {"ttft_ms": 1.5}})
        return InvocationResult(request.request_id, body.encode(), None, "", "inst-1", True, now, now + 0.01,
                                12.0, 0.1, 10.0)

    def invoke_stream(self, request: InvocationRequest) -> ResponseStream:
        stream = ResponseStream()
        stream.run(lambda: self.invoke(request))
        return stream

    def cancel(self, request_id: str) -> bool:
        with self._cond:
            if request_id not in self._running:
                return False
            self.cancelled.append(request_id)
            self._cond.notify_all()
            return True

    def provision(self, function: FunctionSpec, count: int) -> None:
        if count:
            self.provisioned[(function.name, function.version)] = (function, count)
        else:
            self.provisioned.pop((function.name, function.version), None)

    def retire(self, function_name: str, keep_revision: str | None = None, version: str | None = None) -> int:
        self.retired.append((function_name, keep_revision))
        return 0

    def describe(self, checksums: bool = False) -> NodeInfo:
        ready = (lambda n: n if self.provisioned_ready is None else min(n, self.provisioned_ready))
        failure, failures = self.provision_failure or (None, 0)
        held = tuple(ProvisionedInfo(s.name, s.version, s.revision_id, n, ready(n), n - ready(n), failure, failures)
                     for s, n in self.provisioned.values())
        return NodeInfo("fake-node", "cpu", "fake", self.max_instances, 0, 0, (), (), provisioned=held)

    def logs(self, function_name: str, max_bytes: int = 64 * 1024, offset: int | None = None,
             since_ts: float | None = None) -> LogChunk:
        if offset is None and since_ts is None:
            return self.function_logs.read_tail(function_name, max_bytes)
        return self.function_logs.read(function_name, offset=offset, since_ts=since_ts, max_bytes=max_bytes)

    def write_log(self, function_name: str, source: str, line: str) -> None:
        self.function_logs.append(function_name, source, line)

    def delete_logs(self, function_name: str) -> None:
        self.function_logs.remove(function_name)

    def verify(self) -> tuple[IntegrityEvent, ...]:
        return ()

    def shutdown(self) -> None:
        pass


@pytest.fixture(scope="module")
def zips(tiny_assets) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """Base64 code zips, as create_function receives them."""
    from slfaas.client import zip_adapter

    return {k: base64.b64encode(zip_adapter(p)).decode()
            for k, p in (("a", tiny_assets.adapter_a), ("b", tiny_assets.adapter_b),
                         ("misfit", tiny_assets.misfit_adapter))}


@pytest.fixture
def node(tmp_path: Path) -> FakeNode:
    return FakeNode(tmp_path / "logs")


@pytest.fixture
def svc(tmp_path: Path, node: FakeNode):  # type: ignore[no-untyped-def]
    registry = Registry(f"sqlite:///{tmp_path / 'registry.db'}")
    service = FunctionService(registry, node, tmp_path / "code")  # type: ignore[arg-type]
    yield service
    service.events.queue.close()
    node.gate.set()
    registry.close()
