"""One record per replayed request: the client's timings, measured from the request's
*scheduled* arrival (a client that sends late must not hide queueing), joined with the
server's invocation record (cold start, tokens it counted, instance) by request id."""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Iterable, Mapping


@dataclass(frozen=True)
class RequestRecord:
    index: int                    # position in the replayed slice
    function: str
    scheduled_s: float            # seconds after the replay's start (monotonic clock)
    sent_s: float | None          # when the client began the call (None: never sent)
    first_byte_s: float | None    # first non-empty PayloadChunk
    end_s: float | None           # InvokeComplete (or the error)
    prompt_tokens: int            # of the prompt sent (the base tokenizer's count)
    output_tokens: int            # asked for, generated exactly (ignore_eos)
    request_id: str | None = None  # the server's (x-amzn-RequestId)
    response_bytes: int = 0
    error_type: str | None = None  # AWS error code, InvokeComplete's ErrorCode, or a client exception
    error: str | None = None
    throttles: int = 0            # 429s the client waited out before this attempt (--retry-throttled-s)
    # from the server's invocation record (None until joined, or when the server has none)
    cold_start: bool | None = None
    server_status: str | None = None
    server_prompt_tokens: int | None = None
    server_completion_tokens: int | None = None
    instance_id: str | None = None
    init_duration_ms: float | None = None
    server_queue_ms: float | None = None
    server_ttft_ms: float | None = None

    @property
    def ok(self) -> bool:
        return self.error_type is None and self.end_s is not None

    @property
    def ttft_ms(self) -> float | None:
        return None if self.first_byte_s is None else (self.first_byte_s - self.scheduled_s) * 1000

    @property
    def e2e_ms(self) -> float | None:
        return None if self.end_s is None or not self.ok else (self.end_s - self.scheduled_s) * 1000

    @property
    def client_lag_ms(self) -> float | None:
        """How late the client sent it: large values mean the replay machine fell behind."""
        return None if self.sent_s is None else (self.sent_s - self.scheduled_s) * 1000

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["ttft_ms"], out["e2e_ms"] = self.ttft_ms, self.e2e_ms
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "RequestRecord":
        fields = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in fields})


def join_server_records(records: Iterable[RequestRecord],
                        server: Mapping[str, Mapping[str, Any]]) -> tuple[RequestRecord, ...]:
    """``records`` with the fields of the server's invocation record of the same request id
    (``GET /slfaas/v1/invocations``'s items); records the server does not know stay as they are."""
    out = []
    for r in records:
        s = server.get(r.request_id) if r.request_id else None
        if s is None:
            out.append(r)
            continue
        out.append(replace(
            r, cold_start=bool(s.get("cold_start")), server_status=s.get("status"),
            server_prompt_tokens=s.get("prompt_tokens"), server_completion_tokens=s.get("completion_tokens"),
            instance_id=s.get("instance_id") or None, init_duration_ms=s.get("init_duration_ms"),
            server_queue_ms=s.get("queue_ms"), server_ttft_ms=s.get("ttft_ms")))
    return tuple(out)
