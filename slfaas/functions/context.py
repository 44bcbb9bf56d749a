"""The ``context`` a handler receives: AWS Lambda's attributes plus the LoRA engine."""
from __future__ import annotations

import os
import time
from typing import Any

from slfaas.functions.engine import LoraEngine
from slfaas.functions.events import parse_event
from slfaas.functions.runtime_client import Invocation


class LambdaContext:
    def __init__(self, engine: LoraEngine, invocation: Invocation):
        self._engine = engine
        self._invocation = invocation
        self.function_name = os.environ.get("AWS_LAMBDA_FUNCTION_NAME", "")
        self.function_version = os.environ.get("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        self.memory_limit_in_mb = int(os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "0") or 0)
        self.invoked_function_arn = invocation.function_arn
        self.aws_request_id = invocation.request_id
        self.client_context = invocation.client_context
        self.log_group_name = f"/aws/lambda/{self.function_name}"
        self.log_stream_name = os.environ.get("SLFAAS_INSTANCE_ID", "")

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

    def generate_event(self, event: Any) -> dict:
        req = parse_event(event)
        gen = self._engine.generate(req)
        result = {
            "text": gen.text,
            "finish_reason": gen.finish_reason,
            "usage": {"prompt_tokens": gen.prompt_tokens, "completion_tokens": gen.completion_tokens},
            "metrics": {
                "ttft_ms": round(gen.ttft_ms, 3),
                "queue_ms": round(self._invocation.queue_ms, 3),
                "cold_start": self._invocation.cold_start,
                "batch_size": 1,
                "prefill_ms": round(gen.prefill_ms, 3),
            },
        }
        if req.return_tokens:
            result["tokens"] = list(gen.token_ids)
        return result
