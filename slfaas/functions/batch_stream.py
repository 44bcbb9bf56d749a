"""One request inside a ``BatchEngine``: its state in the loop (``_Seq``), the token stream
its reader iterates (``TokenStream``) and its account once done (``SequenceStats``)."""
from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from slfaas.functions.events import GenerationRequest

if TYPE_CHECKING:
    from slfaas.functions.batching import BatchEngine

_END = object()   # a stream's end, as its queue's last item


@dataclass(frozen=True)
class SequenceStats:
    """One request's account of its generation, final once its stream ended."""

    prompt_tokens: int
    prefill_ms: float           # wall time of the prefill pass it was in (device-synchronised)
    device_ms: float            # its token share of the device time of every pass it was in
    batch_device_ms: float      # those passes' whole device time
    batch_size: int             # the most requests in one pass with it


@dataclass(eq=False)
class _Seq:
    req: GenerationRequest
    ids: Any                    # the prompt, (1, n) on the CPU
    generator: Any
    adapter: str | None = None  # a shared runtime's: the adapter this row runs with
    out: "queue.SimpleQueue[Any]" = field(default_factory=queue.SimpleQueue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    emitted: int = 0
    last_token: int = 0
    prefill_ms: float = 0.0
    device_ms: float = 0.0
    batch_device_ms: float = 0.0
    batch_size: int = 0
    oom_since: float | None = None   # when it first could not be prefilled for memory

    @property
    def prompt_tokens(self) -> int:
        return int(self.ids.shape[1])

    def stats(self) -> SequenceStats:
        return SequenceStats(self.prompt_tokens, self.prefill_ms, self.device_ms, self.batch_device_ms,
                             max(1, self.batch_size))


class TokenStream:
    """The token ids of one request as the loop produces them (an iterator, like
    ``LoraEngine.stream``); ``close()`` takes the request out of the batch."""

    def __init__(self, engine: "BatchEngine", seq: _Seq):
        self._engine = engine
        self._seq = seq
        self._done = False

    def __iter__(self) -> "TokenStream":
        return self

    def __next__(self) -> int:
        if self._done:
            raise StopIteration
        item = self._seq.out.get()
        if item is _END:
            self._done = True
            raise StopIteration
        if isinstance(item, BaseException):
            self._done = True
            raise item
        return int(item)

    def close(self) -> None:
        """Leave the batch; returns once the loop let go of the request (at the latest after
        the pass in flight), so ``stats`` include every pass it was in."""
        if self._done:
            return
        self._seq.cancelled.set()
        self._engine._wake()
        while True:
            item = self._seq.out.get()
            if item is _END or isinstance(item, BaseException):
                break
        self._done = True

    @property
    def stats(self) -> SequenceStats:
        """Final once the stream ended (or was closed and drained)."""
        return self._seq.stats()
