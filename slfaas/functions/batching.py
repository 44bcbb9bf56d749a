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

Memory: an emptied batch gives what its cache held back to the device (other instances
share it). Before requests join, ``kv_budget`` checks that the batch's cache at its final width
and the prefill fit in the device memory left (CUDA; the headroom is measured each time), and
the rest wait. A pass that runs out of device memory anyway (other processes share the device)
fails no running request: a prefill's joiners go back to the queue (fewer at a time, or after
a running request leaves), a decode step is rolled back and its newest request alone fails.

Billing: each forward pass's device time (CUDA events on GPU, wall time on CPU) is split
among the requests in it by their share of its tokens: a prefill by prompt tokens (padding
counts for no one), a decode step evenly (one token each). A request's ``device_ms`` is the
sum of its shares; ``batch_device_ms`` the passes' whole time and ``batch_size`` the most
requests one of its passes held.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator

from slfaas.functions.batch_stream import _END, TokenStream, _Seq
from slfaas.functions.device_memory import cache_release, device_headroom, dtype_bytes, idle_release, oom_errors
from slfaas.functions.engine import Generation, LoraEngine
from slfaas.functions.events import GenerationRequest
from slfaas.functions.kv_budget import KvGeometry, Row, joiners_that_fit

if TYPE_CHECKING:
    from slfaas.functions.shared import SharedEngine

log = logging.getLogger(__name__)

LONE_OOM_WAIT_S = 10.0   # a request alone in its instance waits this long for device memory


class EngineClosed(RuntimeError):
    """The batching engine stopped before the request finished."""


class BatchEngine:
    """Runs ``engine``'s model on up to ``max_batch_size`` requests at once. Thread-safe:
    any number of threads may call ``stream``/``generate``; one loop thread does the work."""

    def __init__(self, engine: "LoraEngine | SharedEngine", max_batch_size: int,
                 headroom: Callable[[], float | None] | None = None, release_idle: Callable[[], None] | None = None,
                 bound_bytes: int | None = None):
        """``headroom``: bytes of device memory this batch may still take (default: measured
        on CUDA, no limit elsewhere); ``release_idle``: called when the batch has emptied
        (default: on CUDA, gives a large unused cache back to the device); ``bound_bytes``: the
        node's bound on this instance's device memory, named in out-of-memory errors."""
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
        self._oom = oom_errors(self._torch)
        self._headroom = headroom if headroom is not None else device_headroom(self._torch, engine.device)
        self._release_idle = release_idle if release_idle is not None else idle_release(self._torch, engine.device)
        self._free_cached = cache_release(self._torch, engine.device)
        self._bound_bytes = bound_bytes
        self._geometry = KvGeometry.of(engine.model_base.config, dtype_bytes(engine.model_base))
        self._join_cap = max_batch_size   # halved by a prefill that ran out of memory
        self._wait_below: int | None = None   # after one: no joiner until fewer rows run than this
        self._retry_at = 0.0                  # a lone request refused for memory is tried again then
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
                while not self._closed and not running and (not self._pending or self._retry_at > time.monotonic()):
                    self._cond.wait(None if not self._pending else self._retry_at - time.monotonic())
                if self._closed:
                    for s in [*running, *self._pending]:
                        s.out.put(EngineClosed("the batching engine closed"))
                    self._pending.clear()
                    return
                self._sweep_cancelled()
                room = min(self.max_batch_size - len(running), self._join_cap)
                joining = [self._pending.popleft() for _ in range(min(room, len(self._pending)))]
            requeued: list[_Seq] = []
            try:
                joining = self._admit(batch, running, joining)
                with self.engine.busy():
                    batch, running = self._iteration(batch, running, joining, requeued)
                if not running and not self._pending:
                    self._release_idle()
            except Exception as exc:   # a failed pass fails its requests, never the loop
                log.exception("batched forward pass failed")
                for s in [*running, *joining]:
                    if s not in requeued:   # those wait in the queue again: not this pass's
                        s.out.put(exc)
                batch, running = None, []

    def _sweep_cancelled(self) -> None:
        """Requests whose reader went away while they waited leave the queue (under the lock)."""
        if any(s.cancelled.is_set() for s in self._pending):
            for s in [s for s in self._pending if s.cancelled.is_set()]:
                self._pending.remove(s)
                s.out.put(_END)

    def _iteration(self, batch: Any, running: list[_Seq], joining: list[_Seq],
                   requeued: list[_Seq]) -> tuple[Any, list[_Seq]]:
        for s in joining:
            if s.cancelled.is_set():
                s.out.put(_END)
        joining = [s for s in joining if not s.cancelled.is_set()]
        batch, running = self._drop(batch, running, [not s.cancelled.is_set() for s in running])
        if joining:
            try:
                fresh = self._prefill(joining)
                # merged before any token goes out: a failure here leaves nothing to take back
                merged = fresh.batch if batch is None else batch.merge(fresh.batch)
            except self._oom as exc:
                if not self._prefill_out_of_memory(running, joining, exc):
                    raise self._explain(exc) from exc   # a lone request that waited long enough: its error
                requeued.extend(joining)
                joining = []
            else:
                self._account(joining, [s.prompt_tokens for s in joining], fresh.pass_ms)
                first_tokens = fresh.tokens
                batch = fresh = None           # the old cache and the joiners' own are in ``merged`` now
        if joining:
            self._join_cap = self.max_batch_size
            for s in joining:
                s.oom_since = None
            keep = [True] * len(running) + [self._emit(s, t) for s, t in zip(joining, first_tokens)]
            batch, running = self._drop(merged, running + joining, keep)
        if running:
            columns = int(batch.mask.shape[1])
            try:
                tokens = self._decode(batch, running)
            except self._oom as exc:
                return self._decode_out_of_memory(batch, running, columns, exc)
            keep = [self._emit(s, t) for s, t in zip(running, tokens)]
            batch, running = self._drop(batch, running, keep)
        return batch, running

    def _admit(self, batch: Any, running: list[_Seq], joining: list[_Seq]) -> list[_Seq]:
        """The joiners that fit (``kv_budget``); the others go back to the front of the queue."""
        keep = len(joining)
        if keep and self._wait_below is not None:
            if running and len(running) >= self._wait_below:
                keep = 0
            else:
                self._wait_below = None
        if keep and (headroom := self._headroom()) is not None:
            width = int(batch.mask.shape[1]) if batch is not None else 0
            rows = [Row(width, width + s.req.max_tokens - s.emitted) for s in running]
            keep = min(keep, joiners_that_fit(self._geometry, rows,
                                              [Row(0, s.prompt_tokens + s.req.max_tokens, s.prompt_tokens) for s in joining[:keep]],
                                              headroom))
        if keep < len(joining):
            with self._cond:
                self._pending.extendleft(reversed(joining[keep:]))
        return joining[:keep]

    def _prefill_out_of_memory(self, running: list[_Seq], joining: list[_Seq], exc: BaseException) -> bool:
        """The joiners wait (False: a lone request has waited ``LONE_OOM_WAIT_S`` already): half
        as many next time, or one alone until a running row left or, with nothing running
        here, until other processes free memory. Their generators restart, as if never run."""
        self._free_cached()
        now = time.monotonic()
        if not running and len(joining) == 1:
            first = joining[0].oom_since = joining[0].oom_since or now
            if now - first >= LONE_OOM_WAIT_S:
                return False
            self._retry_at = now + 0.2             # memory other processes hold may come free
        elif len(joining) > 1:
            self._join_cap = max(1, len(joining) // 2)
        else:
            self._wait_below = len(running)
        log.warning("out of device memory prefilling %d request(s) beside %d running; they wait (%s)",
                    len(joining), len(running), str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        for s in joining:
            s.generator = self.engine.generator_for(s.req)
        with self._cond:
            self._pending.extendleft(reversed(joining))
        return True

    def _decode_out_of_memory(self, batch: Any, running: list[_Seq], columns: int,
                              exc: BaseException) -> tuple[Any, list[_Seq]]:
        """Undo the step; the newest request fails with the error (dropped through views: no
        allocation), the others go on, and no one joins until one of them has left."""
        batch.rollback(columns)
        batch = batch.without_last_row()
        self._free_cached()
        log.warning("out of device memory in a decode step of %d request(s): the newest fails", len(running))
        running[-1].out.put(self._explain(exc))
        self._wait_below = len(running) - 1
        return batch, running[:-1]

    def _explain(self, exc: BaseException) -> BaseException:
        """The out-of-memory error a request fails with, naming the instance's bound where the
        node set one (the operator's remedy is to raise it): same type, so callers see the same."""
        if self._bound_bytes is None:
            return exc
        try:
            return type(exc)(f"{exc} [this instance may hold {self._bound_bytes / 2**20:.0f} MiB of device memory "
                             "beside its backbone: the node's --instance-gpu-mb, or --shared-runtime-gpu-mb for a "
                             "shared runtime]")
        except Exception:   # an error type that takes other arguments: as raised
            return exc

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
        for s in seqs:
            s.prefill_ms = wall_ms
        return _Prefilled(PaddedBatch(cache, mask), tokens, pass_ms)   # accounted once merged

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
    pass_ms: float
