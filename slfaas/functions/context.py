"""The ``context`` a handler receives: AWS Lambda's attributes plus the LoRA engine."""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator

from slfaas.functions.client_context import ClientContext
from slfaas.functions.engine import Generation, LoraEngine
from slfaas.functions.events import parse_event
from slfaas.functions.runtime_client import Invocation
from slfaas.runtime_contract import ENV_FUNCTION_MEMORY_MB, ENV_FUNCTION_NAME, ENV_FUNCTION_VERSION, ENV_INSTANCE_ID

if TYPE_CHECKING:
    from slfaas.functions.batching import BatchEngine


@dataclass
class InvocationUsage:
    """What one invocation's generations used, as the runtime reports it beside the response
    (billing): device time (its token shares when batched), the whole passes' device time,
    the largest batch it ran in, and the first generation's TTFT."""

    device_ms: float = 0.0
    batch_device_ms: float = 0.0
    batch_size: int = 1
    ttft_ms: float | None = None
    prompt_tokens: int | None = None   # the first generation's (the node's latency model buckets by it)
    generations: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, gen: Generation) -> None:
        with self._lock:   # a handler may generate from several threads
            self.device_ms += gen.device_ms
            self.batch_device_ms += gen.batch_device_ms
            self.batch_size = max(self.batch_size, gen.batch_size)
            if self.ttft_ms is None:
                self.ttft_ms = gen.ttft_ms
                self.prompt_tokens = gen.prompt_tokens
            self.generations += 1

    def metrics(self) -> dict:
        out: dict = {"device_ms": round(self.device_ms, 3), "batch_device_ms": round(self.batch_device_ms, 3),
                     "batch_size": self.batch_size}
        if self.ttft_ms is not None:
            out["ttft_ms"] = round(self.ttft_ms, 3)
        if self.prompt_tokens is not None:
            out["prompt_tokens"] = self.prompt_tokens
        return out


class LambdaContext:
    def __init__(self, engine: "LoraEngine | BatchEngine", invocation: Invocation):
        """``engine``: the instance's ``LoraEngine``, or its ``BatchEngine`` when handler calls
        run concurrently (SLFAAS_MAX_BATCH_SIZE > 1): generations then share forward passes."""
        self._engine = engine
        self._invocation = invocation
        self.usage = InvocationUsage()
        self.function_name = os.environ.get(ENV_FUNCTION_NAME, "")
        self.function_version = os.environ.get(ENV_FUNCTION_VERSION, "$LATEST")
        self.memory_limit_in_mb = int(os.environ.get(ENV_FUNCTION_MEMORY_MB, "0") or 0)
        self.invoked_function_arn = invocation.function_arn
        self.aws_request_id = invocation.request_id
        self.client_context = ClientContext.parse(invocation.client_context)
        self.log_group_name = f"/aws/lambda/{self.function_name}"
        self.log_stream_name = os.environ.get(ENV_INSTANCE_ID, "")
        # True when the caller reads a stream (InvokeWithResponseStream): a handler may then
        # return an iterator of str/bytes pieces, each sent to the client as it is produced.
        self.response_stream = invocation.response_stream
        self.result_metrics: dict | None = None   # of the last generation (node's records)

    def get_remaining_time_in_millis(self) -> int:
        return max(0, self._invocation.deadline_ms - int(time.time() * 1000))

    @property
    def model(self) -> Any:
        """The PeftModel: the borrowed (read-only) backbone with this function's adapter."""
        return self._engine.model

    @property
    def tokenizer(self) -> Any:
        return self._engine.tokenizer

    def generate(self, prompt: str, **options: Any) -> dict:
        return self.generate_event({"prompt": prompt, **options})

    def stream(self, prompt: str, **options: Any) -> Iterator[str]:
        return self.stream_event({"prompt": prompt, **options})

    def stream_event(self, event: Any) -> Iterator[str]:
        """Generated text in pieces as tokens come (stop strings honoured across pieces).
        The event is validated now, so a bad event fails before anything is streamed."""
        req = parse_event(event)
        return self._stream(req)

    def _stream(self, req: Any) -> Iterator[str]:
        from slfaas.functions.textstream import stream_text

        gen = yield from stream_text(self._engine, req)
        self.usage.add(gen)
        self.result_metrics = {"prompt_tokens": gen.prompt_tokens, "completion_tokens": gen.completion_tokens,
                               "ttft_ms": round(gen.ttft_ms, 3), "finish_reason": gen.finish_reason,
                               "device_ms": round(gen.device_ms, 3), "batch_size": gen.batch_size}

    def generate_event(self, event: Any) -> dict:
        req = parse_event(event)
        gen = self._engine.generate(req)
        self.usage.add(gen)
        result = {
            "text": gen.text,
            "finish_reason": gen.finish_reason,
            "usage": {"prompt_tokens": gen.prompt_tokens, "completion_tokens": gen.completion_tokens},
            "metrics": {
                "ttft_ms": round(gen.ttft_ms, 3),
                "queue_ms": round(self._invocation.queue_ms, 3),
                "cold_start": self._invocation.cold_start,
                "batch_size": gen.batch_size,
                "prefill_ms": round(gen.prefill_ms, 3),
                "device_ms": round(gen.device_ms, 3),
            },
        }
        if req.return_tokens:
            result["tokens"] = list(gen.token_ids)
        return result
