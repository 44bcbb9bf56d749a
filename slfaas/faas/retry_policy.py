"""When an asynchronous (``InvocationType=Event``) invocation is tried again. IO-free.

Lambda's semantics: a function error (the handler raised, crashed or timed out) is retried
twice, about one and then two minutes later; a throttle is retried with growing back-off for
as long as the event is younger than its maximum age (six hours). The delays are the
policy's, so tests and impatient deployments shorten them (``SLFAAS_EVENT_RETRY_DELAYS_S``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

DELAYS_ENV = "SLFAAS_EVENT_RETRY_DELAYS_S"        # e.g. "60,120"
MAX_AGE_ENV = "SLFAAS_EVENT_MAX_AGE_S"
THROTTLE_BASE_ENV = "SLFAAS_EVENT_THROTTLE_BACKOFF_S"


@dataclass(frozen=True)
class EventRetryPolicy:
    max_retries: int = 2
    retry_delays_s: tuple[float, ...] = (60.0, 120.0)
    max_event_age_s: float = 6 * 3600.0
    throttle_backoff_s: float = 1.0
    throttle_backoff_max_s: float = 300.0

    def __post_init__(self) -> None:
        if self.max_retries < 0 or any(d < 0 for d in self.retry_delays_s):
            raise ValueError("retries and delays must not be negative")
        if self.max_retries and not self.retry_delays_s:
            raise ValueError("retry_delays_s needs at least one delay when retries are allowed")

    def after_error(self, attempts: int, enqueued_ts: float, now: float) -> float | None:
        """Seconds until the next try after ``attempts`` tries that ended in an error, or None
        to give up (retries used up, or the event would be too old when it ran)."""
        retry = attempts  # the first retry follows the first attempt
        if retry > self.max_retries:
            return None
        delay = self.retry_delays_s[min(retry, len(self.retry_delays_s)) - 1]
        if now + delay - enqueued_ts > self.max_event_age_s:
            return None
        return delay

    def after_throttle(self, throttles: int, enqueued_ts: float, now: float) -> float | None:
        """Seconds until the next try after the ``throttles``-th throttle, or None when the
        event has reached its maximum age."""
        delay = min(self.throttle_backoff_max_s, self.throttle_backoff_s * 2 ** max(0, throttles - 1))
        if now + delay - enqueued_ts > self.max_event_age_s:
            return None
        return delay

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> "EventRetryPolicy":
        env = os.environ if environ is None else environ
        kwargs: dict = {}
        if env.get(DELAYS_ENV):
            delays = tuple(float(x) for x in env[DELAYS_ENV].split(",") if x.strip())
            kwargs["retry_delays_s"] = delays
            kwargs["max_retries"] = 2 if delays else 0
        if env.get(MAX_AGE_ENV):
            kwargs["max_event_age_s"] = float(env[MAX_AGE_ENV])
        if env.get(THROTTLE_BASE_ENV):
            kwargs["throttle_backoff_s"] = float(env[THROTTLE_BASE_ENV])
        return cls(**kwargs)
