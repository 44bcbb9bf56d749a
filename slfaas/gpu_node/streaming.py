"""A streaming invocation's response on the node: the chunks, in order, as the runtime posts
them, handed from the thread running the invocation to the one writing the HTTP response."""
from __future__ import annotations

import queue
from typing import Callable, Iterator

from slfaas.gpu_node.types import InvocationResult


class ResponseStream:
    """Iterating ends when the invocation does; ``result`` (or ``error``) tells how it ended."""

    _END = object()

    def __init__(self) -> None:
        self._chunks: queue.Queue = queue.Queue()
        self.result: InvocationResult | None = None
        self.error: BaseException | None = None

    def put(self, chunk: bytes) -> None:
        """The runtime's chunks arrive here (never blocks: the queue is unbounded)."""
        self._chunks.put(chunk)

    def run(self, invoke: Callable[[], InvocationResult]) -> None:
        try:
            self.result = invoke()
        except BaseException as exc:  # handed to the reader, who re-raises it
            self.error = exc
        finally:
            self._chunks.put(self._END)

    def __iter__(self) -> Iterator[bytes]:
        while True:
            item = self._chunks.get()
            if item is self._END:
                return
            yield item
