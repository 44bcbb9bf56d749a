"""How an invocation ends when its node is lost: a function error, for a buffered result and
for a stream (whose end the NodeSet must see, to count what runs where)."""
from __future__ import annotations

import json
import time
from typing import Callable, Iterator

from slfaas.gpu_node.api import NodeStream
from slfaas.gpu_node.types import InvocationRequest, InvocationResult

NODE_LOST = "Runtime.NodeLost"


def lost_result(request: InvocationRequest, node_id: str, why: str, start_ts: float) -> InvocationResult:
    """How an invocation ends whose node died under it: a function error, as AWS reports a
    sandbox that crashed (the caller gets a 200 with X-Amz-Function-Error)."""
    now = time.time()
    payload = json.dumps({"errorType": NODE_LOST, "errorMessage": f"The node running the invocation ({node_id}) "
                          f"was lost before it finished: {why}", "stackTrace": []}).encode()
    return InvocationResult(request.request_id, payload, "Unhandled", NODE_LOST, "", False, start_ts, now, None, 0.0,
                            (now - start_ts) * 1000)


class TrackedStream:
    """A node's stream, telling the set how it ended (a lost node's becomes a function error)."""

    def __init__(self, inner: NodeStream,
                 ended: Callable[[InvocationResult | None, BaseException | None], InvocationResult | None]):
        self._inner = inner
        self._ended = ended
        self.result: InvocationResult | None = None
        self.error: BaseException | None = None

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self._inner
        except GeneratorExit:   # the reader stopped early; whoever reads on (a drain) sees the end
            raise
        except BaseException as exc:
            self._finish(exc)
            raise
        self._finish(self._inner.error)

    def _finish(self, error: BaseException | None) -> None:
        self.result = self._ended(self._inner.result, error)
        self.error = None if self.result is not None else error


class FinishedStream:
    """A stream that ended before its first chunk."""

    def __init__(self, result: InvocationResult):
        self.result: InvocationResult | None = result
        self.error: BaseException | None = None

    def __iter__(self) -> Iterator[bytes]:
        return iter(())
