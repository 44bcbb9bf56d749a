"""Iteration-level (continuous) batching inside one instance: several generation requests in
each forward pass, joining and leaving between decode steps.

One loop thread owns the model's batch. Each iteration it (1) drops the requests whose
reader went away (a stop string, a closed stream), (2) prefills the requests that arrived
since the last iteration in one forward (left-padded to a common length, with attention
mask and position ids) and emits their first tokens, (3) merges them into the running batch
(``batch_cache.PaddedBatch``) and (4) runs one decode step for every running request. A
request leaves as soon as it is finished (EOS unless ``ignore_eos``, ``max_tokens``), so no
forward pass computes a token nobody reads; stop strings are the reader's to find
(``textstream``), which then closes its stream.

A request computes what it would compute alone: padded columns get zero attention weight,
its positions are its own, and each request samples with its own ``torch.Generator``,
seeded from its ``seed`` (``LoraEngine.generator_for``), drawing one number per token in
the same order as the unbatched path, whatever else shares its forward passes.

Billing: each forward pass's device time (CUDA events on GPU, wall time on CPU) is split
among the requests in it by their share of its tokens: a prefill by prompt tokens (padding
counts for no one), a decode step evenly (one token each). A request's ``device_ms`` is the
sum of its shares; ``batch_device_ms`` the passes' whole time and ``batch_size`` the most
requests one of its passes held.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator

from slfaas.functions.engine import Generation, LoraEngine
from slfaas.functions.events import GenerationRequest

if TYPE_CHECKING:
    from slfaas.functions.shared import SharedEngine

log = logging.getLogger(__name__)

_END = object()


class EngineClosed(RuntimeError):
    """The batching engine stopped before the request finished."""


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


class BatchEngine:
    """Runs ``engine``'s model on up to ``max_batch_size`` requests at once. Thread-safe:
    any number of threads may call ``stream``/``generate``; one loop thread does the work."""

    def __init__(self, engine: "LoraEngine | SharedEngine", max_batch_size: int):
        from slfaas.functions.batch_cache import supports_padding

        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
        if max_batch_size > 1 and not supports_padding(engine.model_base.config):
            log.warning("this model's attention (sliding window or hybrid) cannot be batched by padding: "
                        "requests run one at a time")
            max_batch_size = 1
        self.engine = engine
        self.max_batch_size = max_batch_size
        self._eos_ids = engine.eos_ids
        self.device_ms_total = 0.0       # every pass's device time: the requests' shares add up to it
        self.passes = 0
        self._torch = engine._torch
        self._cond = threading.Condition()
        self._pending: deque[_Seq] = deque()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, daemon=True, name="batch-loop")
        self._thread.start()

    # the LoraEngine surface that textstream and the context use
    @property
    def model(self) -> Any:
        return self.engine.model

    @property
    def tokenizer(self) -> Any:
        return self.engine.tokenizer

    @property
    def eos_ids(self) -> frozenset[int]:
        return self.engine.eos_ids

    @contextmanager
    def busy(self) -> Iterator[None]:
        """The loop marks the engine busy while it works; a reader has nothing to mark."""
        yield

    def stream(self, req: GenerationRequest) -> TokenStream:
        return self.open([req])[0]

    def open(self, reqs: list[GenerationRequest], adapter: str | None = None) -> list[TokenStream]:
        """Queue several requests at once: they are prefilled in the same forward pass (as
        far as the batch has room), as a batch delivered together would be. ``adapter``: in a
        shared runtime (``slfaas.functions.shared``), the adapter their rows run with."""
        seqs = [_Seq(r, self.engine.encode(r), self.engine.generator_for(r), adapter) for r in reqs]
        with self._cond:
            if self._closed:
                raise EngineClosed("the batching engine is closed")
            self._pending.extend(seqs)
            self._cond.notify()
        return [TokenStream(self, s) for s in seqs]

    def generate(self, req: GenerationRequest) -> Generation:
        return self._collect(req, None)

    def generate_many(self, reqs: list[GenerationRequest]) -> list[Generation]:
        """Several requests queued at once (``open``), each read by its own thread."""
        streams = self.open(reqs)
        results: list[Generation | BaseException | None] = [None] * len(reqs)

        def read(i: int) -> None:
            try:
                results[i] = self._collect(reqs[i], streams[i])
            except BaseException as exc:
                results[i] = exc
        readers = [threading.Thread(target=read, args=(i,), daemon=True) for i in range(len(reqs))]
        for t in readers:
            t.start()
        for t in readers:
            t.join()
        for r in results:
            if isinstance(r, BaseException):
                raise r
        return [r for r in results if isinstance(r, Generation)]

    def _collect(self, req: GenerationRequest, stream: TokenStream | None) -> Generation:
        from slfaas.functions.textstream import stream_text

        pieces = stream_text(self, req, stream)
        while True:
            try:
                next(pieces)
            except StopIteration as done:
                return done.value

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout=30)

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify()

    # the loop thread
    def _loop(self) -> None:
        batch = None                        # PaddedBatch of ``running``
        running: list[_Seq] = []
        while True:
            with self._cond:
                while not self._pending and not running and not self._closed:
                    self._cond.wait()
                if self._closed:
                    for s in [*running, *self._pending]:
                        s.out.put(EngineClosed("the batching engine closed"))
                    self._pending.clear()
                    return
                room = self.max_batch_size - len(running)
                joining = [self._pending.popleft() for _ in range(min(room, len(self._pending)))]
            try:
                with self.engine.busy():
                    batch, running = self._iteration(batch, running, joining)
            except Exception as exc:   # a failed pass fails its requests, never the loop
                log.exception("batched forward pass failed")
                for s in [*running, *joining]:
                    s.out.put(exc)
                batch, running = None, []

    def _iteration(self, batch: Any, running: list[_Seq], joining: list[_Seq]) -> tuple[Any, list[_Seq]]:
        for s in joining:
            if s.cancelled.is_set():
                s.out.put(_END)
        joining = [s for s in joining if not s.cancelled.is_set()]
        batch, running = self._drop(batch, running, [not s.cancelled.is_set() for s in running])
        if joining:
            fresh = self._prefill(joining)
            keep = [self._emit(s, t) for s, t in zip(joining, fresh.tokens)]
            joined, joining = self._drop(fresh.batch, joining, keep)
            if joined is not None:
                batch = joined if batch is None else batch.merge(joined)
                running = running + joining
        if running:
            tokens = self._decode(batch, running)
            keep = [self._emit(s, t) for s, t in zip(running, tokens)]
            batch, running = self._drop(batch, running, keep)
        return batch, running

    def _drop(self, batch: Any, seqs: list[_Seq], keep: list[bool]) -> tuple[Any, list[_Seq]]:
        if all(keep):
            return batch, seqs
        for s, k in zip(seqs, keep):
            if not k:
                s.out.put(_END)
        rows = [i for i, k in enumerate(keep) if k]
        return batch.select(rows), [seqs[i] for i in rows]

    def _emit(self, s: _Seq, token: int) -> bool:
        """Hand one token to its reader; False when the request is finished."""
        s.out.put(token)
        s.emitted += 1
        s.last_token = token
        if s.emitted >= s.req.max_tokens or (token in self._eos_ids and not s.req.ignore_eos):
            return False
        return not s.cancelled.is_set()

    def _prefill(self, seqs: list[_Seq]) -> "_Prefilled":
        from transformers import DynamicCache

        from slfaas.functions.batch_cache import PaddedBatch

        torch = self._torch
        width = max(s.prompt_tokens for s in seqs)
        ids = torch.zeros((len(seqs), width), dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for row, s in enumerate(seqs):
            ids[row, width - s.prompt_tokens:] = s.ids[0]
            mask[row, width - s.prompt_tokens:] = 1
        ids, mask = ids.to(self.engine.device), mask.to(self.engine.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache()
        t0 = time.perf_counter()
        tokens, pass_ms = self._timed_pass(ids, mask, cache, positions, seqs)
        wall_ms = (time.perf_counter() - t0) * 1000
        self._account(seqs, [s.prompt_tokens for s in seqs], pass_ms)
        for s in seqs:
            s.prefill_ms = wall_ms
        return _Prefilled(PaddedBatch(cache, mask), tokens)

    def _decode(self, batch: Any, seqs: list[_Seq]) -> list[int]:
        torch = self._torch
        device = self.engine.device
        ids = torch.tensor([[s.last_token] for s in seqs], dtype=torch.long, device=device)
        # each row's own position (padding excluded): its prompt, then the tokens fed back so far
        positions = torch.tensor([[s.prompt_tokens + s.emitted - 1] for s in seqs], device=device)
        mask = batch.decode_mask()
        tokens, pass_ms = self._timed_pass(ids, mask, batch.cache, positions, seqs)
        self._account(seqs, [1] * len(seqs), pass_ms)
        return tokens

    def _timed_pass(self, ids: Any, mask: Any, cache: Any, positions: Any, seqs: list[_Seq]) -> tuple[list[int], float]:
        """One forward plus the token picks; its device time (CUDA events; wall on CPU)."""
        torch = self._torch
        cuda = self.engine.device.type == "cuda"
        start = end = None
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
        t0 = time.perf_counter()
        per_row = {"adapter_names": [s.adapter for s in seqs]} if any(s.adapter for s in seqs) else {}
        with torch.inference_mode():
            logits = self.engine.forward(ids, mask, cache, position_ids=positions, **per_row).logits[:, -1, :]
            picked = logits.argmax(dim=-1)
            for row, s in enumerate(seqs):
                if not s.req.greedy:   # its own generator, on a (1, vocab) row: as it would alone
                    picked[row] = self.engine.pick(logits[row:row + 1], s.req, s.generator)[0]
        if end is not None:
            end.record()
        tokens = [int(t) for t in picked.tolist()]   # synchronises the device
        pass_ms = float(start.elapsed_time(end)) if start is not None else (time.perf_counter() - t0) * 1000
        return tokens, pass_ms

    def _account(self, seqs: list[_Seq], tokens: list[int], pass_ms: float) -> None:
        total = sum(tokens)
        self.device_ms_total += pass_ms
        self.passes += 1
        for s, n in zip(seqs, tokens):
            s.device_ms += pass_ms * n / total
            s.batch_device_ms += pass_ms
            s.batch_size = max(s.batch_size, len(seqs))


@dataclass(frozen=True)
class _Prefilled:
    batch: Any
    tokens: list[int]
