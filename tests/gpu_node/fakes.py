"""A fake sandbox backend: each "process" is a thread speaking the real Runtime API.

The thread uses ``RuntimeClient`` over the instance's Unix socket (``spec.runtime_socket``),
so the agent, the instance state machine and the Runtime API server run for real; only the
process and the model are fake.

Init behaviour comes from the function's environment (``FAKE_INIT``):
  ``ok`` (default) · ``error`` (POST /init/error, then exit 1) · ``exit:N`` (exit N before
  the first /next) · ``hang`` (never asks for work) · ``gate:NAME`` (asks once the factory's
  ``gates[NAME]`` is set).
``crash_silently()`` ends a "process" the way a real crash does while it waits for work: its
pending ``/next`` connection closes, and (with the factory's ``hold_exit_reports``) the node's
watcher hears of the exit only when the test says so (``release_exit_reports``).
Each invocation's behaviour comes from its JSON payload (``{"do": ...}``):
  ``echo`` (default; optional ``sleep``) · ``error`` (POST …/error with ``type``/``message``)
  · ``hang`` (never answers) · ``exit`` (exit with ``code`` mid-invocation)
  · ``gate`` (block until the factory's ``gates[name]`` is set, then echo).
"""
from __future__ import annotations

import itertools
import json
import threading
import time
from pathlib import Path

from slfaas.functions.runtime_client import NodeGone, RuntimeClient
from slfaas.gpu_node.sandboxes.base import LogSink, Sandbox, SandboxFactory, SandboxSpec
from slfaas.gpu_node.types import FunctionSpec, InvocationRequest

SIGTERM_CODE = -15
SIGKILL_CODE = -9
_pids = itertools.count(4_000_000)  # above pid_max: /proc/<pid> never exists


class _TrackingClient(RuntimeClient):
    """The Runtime API client, keeping its open connection so a "crash" can close it."""

    def __init__(self, path: str):
        super().__init__(path)
        self.open: list = []

    def waiting_for_work(self) -> bool:
        from slfaas.runtime_contract import PATH_NEXT

        return any(getattr(c, "slfaas_path", "") == PATH_NEXT for c in list(self.open))

    def _request(self, method, path, body=b"", headers=None):  # type: ignore[no-untyped-def]
        import http.client

        from slfaas.functions import runtime_client as rcmod

        conn = rcmod._UnixConnection(self._path)
        self.open.append(conn)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            conn.slfaas_path = path   # type: ignore[attr-defined]  # sent: now waiting for the answer
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        except (OSError, http.client.HTTPException) as exc:
            raise NodeGone(str(exc)) from exc
        finally:
            conn.close()
            self.open.remove(conn)


class FakeSandbox(Sandbox):
    def __init__(self, spec: SandboxSpec, log_sink: LogSink, factory: "FakeSandboxFactory"):
        self.spec = spec
        self._log = log_sink
        self._factory = factory
        self._pid = next(_pids)
        self._lock = threading.Lock()
        self._exited = threading.Event()
        self._reported = threading.Event()   # what wait() sees: the exit, unless the factory holds it
        self._client: _TrackingClient | None = None
        self.exit_code: int | None = None
        self.stop_calls = 0
        self.stopped_ts: float | None = None  # time.time() of the first stop()
        self.kill_calls = 0
        self.handled: list[str] = []      # request ids this "process" received
        self.deliveries: list = []        # the Invocation objects, as the runtime saw them
        self._thread = threading.Thread(target=self._main, daemon=True, name=f"fake-{spec.instance_id}")
        self._thread.start()

    # Sandbox
    @property
    def pid(self) -> int | None:
        return self._pid

    def wait(self, timeout_s: float | None = None) -> int | None:
        if not self._reported.wait(timeout_s):
            return None
        return self.exit_code

    def crash_silently(self, code: int = -9) -> None:
        """Die while waiting for work: the pending /next connection closes at once."""
        self._exit(code)
        client = self._client
        for conn in list(client.open if client else []):
            if conn.sock is not None:
                import socket
                conn.sock.shutdown(socket.SHUT_RDWR)

    def stop(self, grace_s: float = 2.0) -> None:
        self.stop_calls += 1
        if self.stopped_ts is None:
            self.stopped_ts = time.time()
        self._exit(SIGTERM_CODE)

    def kill(self) -> None:
        self.kill_calls += 1
        self._exit(SIGKILL_CODE)

    # helpers for tests
    @property
    def exited(self) -> bool:
        return self._exited.is_set()

    def _exit(self, code: int) -> None:
        with self._lock:
            if self._exited.is_set():
                return
            self.exit_code = code
            self._exited.set()
            if not self._factory.hold_exit_reports:
                self._reported.set()

    # the "process"
    def _main(self) -> None:
        client = self._client = _TrackingClient(str(self.spec.runtime_socket))
        init = self.spec.env.get("FAKE_INIT", "ok")
        self._log(f"fake runtime {self.spec.instance_id} starting")
        try:
            if init == "error":
                client.init_error({"errorType": "Runtime.ImportModuleError",
                                   "errorMessage": "Unable to import module 'handler'", "stackTrace": []})
                self._exit(1)
                return
            if init.startswith("exit:"):
                self._exit(int(init.split(":", 1)[1]))
                return
            if init == "hang":
                self._exited.wait()
                return
            if init.startswith("gate:"):   # init ends when the test opens the gate
                self._factory.gate(init.split(":", 1)[1]).wait(10)
            while not self._exited.is_set():
                inv = client.next()
                if self._exited.is_set():  # a dead process answers nothing
                    return
                self._handle(client, inv)
        except NodeGone:
            pass
        self._exit(0)

    def _handle(self, client: RuntimeClient, inv) -> None:  # type: ignore[no-untyped-def]
        self.handled.append(inv.request_id)
        self.deliveries.append(inv)
        event = json.loads(inv.payload or b"{}")
        action = event.get("do", "echo") if isinstance(event, dict) else "echo"
        self._factory.entered(self)
        if action == "hang":
            self._exited.wait()
            return
        if action == "exit":
            self._exit(int(event["code"]))
            return
        if action == "error":
            client.error(inv.request_id, {"errorType": event.get("type", "ValueError"),
                                          "errorMessage": event.get("message", "boom"), "stackTrace": []})
            return
        if action == "gate":
            self._factory.gate(event["gate"]).wait(10)
        elif event.get("sleep"):
            self._exited.wait(float(event["sleep"]))
        if self._exited.is_set():
            return
        client.respond(inv.request_id, json.dumps({
            "echo": event, "request_id": inv.request_id, "cold_start": inv.cold_start,
            "arn": inv.function_arn, "deadline_ms": inv.deadline_ms, "client_context": inv.client_context,
            "instance_id": self.spec.instance_id,
        }).encode())


class FakeSandboxFactory(SandboxFactory):
    name = "fake"

    def __init__(self) -> None:
        self.sandboxes: list[FakeSandbox] = []
        self.fail_start: BaseException | None = None
        self.closed = False
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._entered = 0
        self._gates: dict[str, threading.Event] = {}
        self.hold_exit_reports = False

    def start(self, spec: SandboxSpec, log_sink: LogSink) -> Sandbox:
        if self.fail_start is not None:
            raise self.fail_start
        sb = FakeSandbox(spec, log_sink, self)
        with self._lock:
            self.sandboxes.append(sb)
        return sb

    def close(self) -> None:
        self.closed = True

    # test helpers
    def release_exit_reports(self) -> None:
        self.hold_exit_reports = False
        for sb in self.sandboxes:
            if sb.exited:
                sb._reported.set()

    def gate(self, name: str) -> threading.Event:
        with self._lock:
            return self._gates.setdefault(name, threading.Event())

    def entered(self, _sb: FakeSandbox) -> None:
        with self._cond:
            self._entered += 1
            self._cond.notify_all()

    def wait_entered(self, n: int, timeout_s: float = 10) -> None:
        """Block until ``n`` invocations in total have reached a runtime."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._entered >= n, timeout_s):
                raise AssertionError(f"only {self._entered} of {n} invocations reached a runtime")

    def for_instance(self, instance_id: str) -> FakeSandbox:
        return next(s for s in self.sandboxes if s.spec.instance_id == instance_id)


def make_spec(base: Path, code_dir: Path, name: str = "fn", revision: str = "r1", timeout_s: int = 5,
              env: dict[str, str] | None = None, memory_mb: int = 128) -> FunctionSpec:
    return FunctionSpec(name=name, version="$LATEST", revision_id=revision,
                        arn=f"arn:aws:lambda:us-east-1:000000000000:function:{name}", code_dir=code_dir,
                        base_model_path=base, handler="slfaas.lora", timeout_s=timeout_s, memory_mb=memory_mb,
                        environment=env or {})


def make_request(spec: FunctionSpec, payload: object = None, request_id: str | None = None,
                 client_context: str | None = None) -> InvocationRequest:
    import uuid

    body = json.dumps(payload if payload is not None else {"do": "echo"}).encode()
    return InvocationRequest(request_id or str(uuid.uuid4()), spec, body, client_context)


def wait_until(pred, timeout_s: float = 5.0, interval_s: float = 0.01) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(interval_s)
    return bool(pred())
