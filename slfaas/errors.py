"""Domain exceptions. The API layer maps them to AWS error shapes; nothing else does."""
from __future__ import annotations


class SlfaasError(Exception):
    """Base of every error slfaas raises on purpose."""


class NotFound(SlfaasError):
    """A function, version, model or record does not exist."""


class InvalidParameter(SlfaasError):
    """A request parameter is wrong (bad zip, missing adapter files, shapes that do not fit)."""


class CodeStorageExceeded(SlfaasError):
    """The server has no room left to store a function's code."""


class InvalidRequestContent(SlfaasError):
    """A request body cannot be parsed."""


class Conflict(SlfaasError):
    """The resource exists already, or is not in a state that allows the operation."""


class PreconditionFailed(Conflict):
    """A RevisionId given with the request no longer matches the resource (AWS answers 412)."""


class ProvisionedConcurrencyConfigNotFound(NotFound):
    """A function version or alias has no provisioned concurrency configuration."""


class TooManyRequests(SlfaasError):
    """A concurrency or capacity limit refused the request."""

    def __init__(self, message: str, reason: str = "ReservedFunctionConcurrentInvocationLimitExceeded",
                 retry_after_s: float | None = None):
        super().__init__(message)
        self.reason = reason
        self.retry_after_s = retry_after_s   # when a retry may succeed; None: the API's default


class RequestTooLarge(SlfaasError):
    """The request payload exceeds its limit."""


class NodeError(SlfaasError):
    """The node could not provide what an invocation needs (e.g. a backbone failed to load)."""


class InvocationCancelled(SlfaasError):
    """The invocation was dropped before it ran: its caller went away."""
