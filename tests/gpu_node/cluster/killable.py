"""A node handle whose agent can be "killed" (for testing NodeSet alone): after ``kill()`` every
call raises ``NodeLost``, and invocations running at that moment end with ``NodeLost`` too,
as a Ray call to an actor that died does. Everything else is the real in-process node."""
from __future__ import annotations

import threading
from typing import Callable, TypeVar

from slfaas.gpu_node.cluster.handle import LocalNode, NodeLost
from slfaas.gpu_node.streaming import ResponseStream
from slfaas.gpu_node.types import InvocationRequest, InvocationResult

T = TypeVar("T")


class KillableNode(LocalNode):
    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.killed = threading.Event()
        self.refuse_with: BaseException | None = None   # raised by invoke/invoke_stream while set

    def kill(self) -> None:
        self.killed.set()

    def _guard(self, fn: Callable[[], T]) -> T:
        if self.killed.is_set():
            raise NodeLost(self.node_id, "actor died")
        return fn()

    def _until_killed(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` in a thread; a kill meanwhile ends the wait with NodeLost."""
        box: dict = {}
        done = threading.Event()

        def run() -> None:
            try:
                box["value"] = fn()
            except BaseException as exc:  # handed to the caller
                box["error"] = exc
            done.set()

        threading.Thread(target=run, daemon=True).start()
        while not done.wait(0.01):
            if self.killed.is_set():
                raise NodeLost(self.node_id, "actor died")
        if "error" in box:
            raise box["error"]
        return box["value"]

    def summary(self):  # type: ignore[no-untyped-def]
        return self._guard(super().summary)

    def prepare(self, function):  # type: ignore[no-untyped-def]
        return self._guard(lambda: super(KillableNode, self).prepare(function))

    def invoke(self, request: InvocationRequest) -> InvocationResult:
        if self.refuse_with is not None:
            raise self.refuse_with
        return self._guard(lambda: self._until_killed(lambda: self.node.invoke(request)))

    def invoke_stream(self, request):  # type: ignore[no-untyped-def]
        if self.refuse_with is not None:
            raise self.refuse_with
        inner = self._guard(lambda: self.node.invoke_stream(request))
        out = ResponseStream()

        def pump() -> InvocationResult:
            for chunk in inner:
                out.put(chunk)
            if inner.error is not None:
                raise inner.error
            assert inner.result is not None
            return inner.result

        threading.Thread(target=out.run, args=(lambda: self._until_killed(pump),), daemon=True).start()
        return out

    def describe(self, checksums: bool = False):  # type: ignore[no-untyped-def]
        return self._guard(lambda: super(KillableNode, self).describe(checksums))

    def retire(self, function_name, keep_revision=None, version=None):  # type: ignore[no-untyped-def]
        return self._guard(lambda: super(KillableNode, self).retire(function_name, keep_revision, version))

    def logs(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        return self._guard(lambda: super(KillableNode, self).logs(*args, **kwargs))

    def cancel(self, request_id):  # type: ignore[no-untyped-def]
        return self._guard(lambda: super(KillableNode, self).cancel(request_id))

    def provision(self, function, count):  # type: ignore[no-untyped-def]
        return self._guard(lambda: super(KillableNode, self).provision(function, count))

    def node_usage(self):  # type: ignore[no-untyped-def]
        return self._guard(super().node_usage)

    def live_instances(self):  # type: ignore[no-untyped-def]
        return self._guard(super().live_instances)

    def verify(self):  # type: ignore[no-untyped-def]
        return self._guard(super().verify)

    def write_log(self, function_name, source, line):  # type: ignore[no-untyped-def]
        return self._guard(lambda: super(KillableNode, self).write_log(function_name, source, line))

    def delete_logs(self, function_name):  # type: ignore[no-untyped-def]
        return self._guard(lambda: super(KillableNode, self).delete_logs(function_name))
