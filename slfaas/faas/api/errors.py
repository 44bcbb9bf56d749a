"""Domain exceptions → AWS error responses (the only place they are shaped)."""
from __future__ import annotations

import json
import logging
import math

from flask import Response
from werkzeug.exceptions import HTTPException

from slfaas.errors import (CodeStorageExceeded, Conflict, InvalidParameter, InvalidRequestContent, NodeError, NotFound, PreconditionFailed,
                           ProvisionedConcurrencyConfigNotFound, RequestTooLarge, SlfaasError, TooManyRequests)

log = logging.getLogger(__name__)

RETRY_AFTER_S = "1"   # what a 429 tells the caller to wait: invocations last about that long
MAX_RETRY_AFTER_S = 300


def retry_after(exc: TooManyRequests) -> str:
    """Retry-After in whole seconds: the refusing layer's estimate where it made one (the
    node's queues know how long they take to drain), else ``RETRY_AFTER_S``."""
    hint = exc.retry_after_s
    if hint is None or not math.isfinite(hint):
        return RETRY_AFTER_S
    return str(min(MAX_RETRY_AFTER_S, max(1, math.ceil(hint))))

_MAPPING: list[tuple[type[SlfaasError], int, str]] = [  # subclasses before their bases
    (ProvisionedConcurrencyConfigNotFound, 404, "ProvisionedConcurrencyConfigNotFoundException"),
    (NotFound, 404, "ResourceNotFoundException"),
    (PreconditionFailed, 412, "PreconditionFailedException"),
    (InvalidParameter, 400, "InvalidParameterValueException"),
    (InvalidRequestContent, 400, "InvalidRequestContentException"),
    (CodeStorageExceeded, 400, "CodeStorageExceededException"),
    (Conflict, 409, "ResourceConflictException"),
    (TooManyRequests, 429, "TooManyRequestsException"),
    (RequestTooLarge, 413, "RequestTooLargeException"),
    (NodeError, 500, "ServiceException"),
]


def aws_error(status: int, code: str, message: str, error_kind: str = "User", **extra: object) -> Response:
    body = {"Type": error_kind, "message": message, **extra}
    resp = Response(json.dumps(body), status=status, mimetype="application/json")
    resp.headers["x-amzn-ErrorType"] = code
    return resp


def from_domain(exc: SlfaasError) -> Response:
    for cls, status, code in _MAPPING:
        if isinstance(exc, cls):
            extra = {"Reason": exc.reason} if isinstance(exc, TooManyRequests) else {}
            resp = aws_error(status, code, str(exc), "Service" if status >= 500 else "User", **extra)
            if isinstance(exc, TooManyRequests):
                resp.headers["Retry-After"] = retry_after(exc)
            return resp
    return aws_error(500, "ServiceException", str(exc), "Service")


def from_http(exc: HTTPException) -> Response:
    code = exc.code or 500
    if code == 413:
        return aws_error(413, "RequestTooLargeException", "Request must be smaller than the allowed size")
    if code == 404:
        return aws_error(404, "UnknownOperationException", "Unknown operation or resource path")
    if code == 405:
        return aws_error(405, "UnknownOperationException", "Method not allowed for this resource")
    return aws_error(code, "InvalidRequestContentException" if code < 500 else "ServiceException",
                     exc.description or exc.name, "User" if code < 500 else "Service")


def from_unexpected(exc: Exception) -> Response:
    log.exception("unhandled error while serving a request")
    return aws_error(500, "ServiceException", f"Internal error: {exc.__class__.__name__}", "Service")
