"""An OpenAI-compatible endpoint over the functions: ``/v1/completions``,
``/v1/chat/completions`` (both also streaming, as server-sent events) and ``/v1/models``.

``model`` is a function name, optionally ``name:qualifier`` (a version or an alias), or an ARN;
each request is one invocation of that function, with the event built from the request, so it
is metered, logged and batched like any invoke. Chat messages travel to the function as
``messages``; its runtime renders them with the base tokenizer's chat template if it has one,
else with slfaas's simple template (``slfaas.functions.chat``). Errors come back in OpenAI's
shape (``{"error": {"message", "type", "param", "code"}}``) so the ``openai`` client raises its
usual exceptions.
"""
from __future__ import annotations

import codecs
import json
import logging
import math
import time
from typing import Any, Iterator

from flask import Blueprint, Response, current_app, request
from werkzeug.exceptions import HTTPException

from slfaas.errors import Conflict, InvalidParameter, InvalidRequestContent, NotFound, RequestTooLarge, SlfaasError, \
    TooManyRequests
from slfaas.faas.api.errors import retry_after
from slfaas.faas.api.lambda_api import _json, client_gone
from slfaas.faas.service import FunctionService
from slfaas.faas.streaming import StreamingInvocation, start_stream
from slfaas.functions.events import MAX_TOKENS_LIMIT

log = logging.getLogger(__name__)

bp = Blueprint("openai_api", __name__, url_prefix="/v1")

DEFAULT_COMPLETION_TOKENS = 16     # OpenAI's default for /v1/completions
DEFAULT_CHAT_TOKENS = 256
_ROLES = {"system", "developer", "user", "assistant", "tool"}
# parameters slfaas does not implement, with the values that mean "not used"
_UNSUPPORTED: dict[str, tuple] = {"logprobs": (False, 0), "top_logprobs": (0,), "echo": (False,), "best_of": (1,),
                                  "suffix": ("",), "tools": ([],), "functions": ([],), "logit_bias": ({},)}


class BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


def _service() -> FunctionService:
    return current_app.extensions["slfaas.service"]


def openai_error(status: int, message: str, type_: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None) -> Response:
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return Response(json.dumps(body), status=status, mimetype="application/json")


@bp.errorhandler(BadRequest)
def _bad_request(exc: BadRequest) -> Response:
    return openai_error(400, str(exc), param=exc.param)


@bp.errorhandler(SlfaasError)
def _domain_error(exc: SlfaasError) -> Response:
    if isinstance(exc, NotFound):
        return openai_error(404, f"The model does not exist or you do not have access to it: {exc}",
                            code="model_not_found", param="model")
    if isinstance(exc, TooManyRequests):
        resp = openai_error(429, str(exc), "rate_limit_exceeded", code=getattr(exc, "reason", None))
        resp.headers["Retry-After"] = retry_after(exc)
        return resp
    if isinstance(exc, RequestTooLarge):
        return openai_error(413, str(exc))
    if isinstance(exc, Conflict):
        return openai_error(409, str(exc), code="model_not_ready", param="model")
    if isinstance(exc, (InvalidParameter, InvalidRequestContent)):
        return openai_error(400, str(exc))
    return openai_error(500, str(exc), "server_error")


@bp.errorhandler(HTTPException)
def _http_error(exc: HTTPException) -> Response:
    return openai_error(exc.code or 500, exc.description or exc.name,
                        "invalid_request_error" if (exc.code or 500) < 500 else "server_error")


@bp.app_errorhandler(404)
@bp.app_errorhandler(405)
def _unrouted(exc: HTTPException) -> Response:
    """Requests no rule matched (e.g. a path with a newline) have no blueprint: answer those
    under /v1 in OpenAI's shape, the rest as the Lambda API does."""
    if request.path == "/v1" or request.path.startswith("/v1/"):
        return _http_error(exc)
    from slfaas.faas.api.errors import from_http
    return from_http(exc)


@bp.errorhandler(Exception)
def _unexpected(exc: Exception) -> Response:
    log.exception("unhandled error in the OpenAI endpoint")
    return openai_error(500, f"Internal error: {exc.__class__.__name__}", "server_error")


# request parsing
def _body() -> dict[str, Any]:
    raw = request.get_data(cache=True)
    try:
        body = json.loads(raw) if raw.strip() else None
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise BadRequest(f"We could not parse the JSON body of your request: {exc}")
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object.")
    return body


def _int(body: dict, key: str, default: int | None, low: int, high: int) -> int | None:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"'{key}' must be an integer, got {value!r}", key)
    if not low <= value <= high:
        raise BadRequest(f"'{key}' must be between {low} and {high}, got {value}", key)
    return value


def _float(body: dict, key: str, default: float, low: float, high: float, low_open: bool = False) -> float:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BadRequest(f"'{key}' must be a number, got {value!r}", key)
    if value > high or value < low or (low_open and value == low):
        raise BadRequest(f"'{key}' must be {'>' if low_open else '>='} {low} and <= {high}, got {value}", key)
    return float(value)


def _common(body: dict, default_tokens: int, tokens_keys: tuple[str, ...]) -> tuple[str, dict, bool, bool]:
    """(model, event fields, stream, include_usage) shared by both endpoints."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("'model' is required: the name of a deployed function (optionally name:qualifier)", "model")
    if body.get("n") not in (None, 1):
        raise BadRequest("Only n=1 is supported", "n")
    for key, neutral in _UNSUPPORTED.items():
        if key in body and body[key] is not None and body[key] not in neutral:
            raise BadRequest(f"'{key}' is not supported by this server", key)
    max_tokens = None
    for key in tokens_keys:
        max_tokens = _int(body, key, None, 1, MAX_TOKENS_LIMIT)
        if max_tokens is not None:
            break
    event: dict[str, Any] = {
        "max_tokens": max_tokens or default_tokens,
        "temperature": _float(body, "temperature", 1.0, 0.0, 2.0),
        "top_p": _float(body, "top_p", 1.0, 0.0, 1.0, low_open=True),
    }
    seed = body.get("seed")
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise BadRequest(f"'seed' must be an integer, got {seed!r}", "seed")
        event["seed"] = seed
    stop = body.get("stop")
    if stop is not None:
        if isinstance(stop, str):
            stop = [stop]
        if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) and s for s in stop):
            raise BadRequest("'stop' must be a non-empty string or a list of up to 4 of them", "stop")
        if stop:
            event["stop"] = stop
    stream = body.get("stream", False)
    if not isinstance(stream, bool) and stream is not None:
        raise BadRequest("'stream' must be a boolean", "stream")
    options = body.get("stream_options")
    options = {} if options is None else options
    if not isinstance(options, dict):
        raise BadRequest("'stream_options' must be an object", "stream_options")
    return model, event, bool(stream), bool(options.get("include_usage"))


def _prompt(body: dict) -> str:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise BadRequest("'prompt' must be a string (or a list of one string; token arrays and batches of prompts "
                         "are not supported)", "prompt")
    return prompt


def _messages(body: dict) -> list[dict[str, str]]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty array", "messages")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or m["role"] not in _ROLES:
            raise BadRequest(f"messages[{i}] must be an object with a 'role' of {sorted(_ROLES)}", f"messages[{i}]")
        content = m.get("content")
        if isinstance(content, list):  # content parts: only text
            texts = []
            for part in content:
                if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise BadRequest(f"messages[{i}].content: only text parts are supported", f"messages[{i}]")
                texts.append(part["text"])
            content = "".join(texts)
        if content is None and m["role"] == "assistant":
            content = ""
        if not isinstance(content, str):
            raise BadRequest(f"messages[{i}].content must be a string or an array of text parts", f"messages[{i}]")
        out.append({"role": m["role"], "content": content})
    return out


# running
def _invoke(model: str, event: dict) -> tuple[dict, str]:
    """(the function's result object, the invocation's request id)."""
    outcome = _service().invoke(model, None, json.dumps(event).encode(), client_gone=client_gone())
    try:
        result = json.loads(outcome.payload) if outcome.payload else None
    except ValueError:
        result = None
    if outcome.function_error:
        message = result.get("errorMessage") if isinstance(result, dict) else None
        code = result.get("errorType") if isinstance(result, dict) else None
        raise _FunctionFailed(str(message or "the function failed"), str(code or outcome.function_error))
    if not isinstance(result, dict) or not isinstance(result.get("text"), str):
        raise _FunctionFailed("the function did not return a completion ({\"text\": ...})", "InvalidFunctionResult")
    return result, outcome.request_id


class _FunctionFailed(Exception):
    def __init__(self, message: str, code: str):
        super().__init__(message)
        self.code = code


@bp.errorhandler(_FunctionFailed)
def _function_failed(exc: _FunctionFailed) -> Response:
    return openai_error(500, f"The function failed: {exc}", "server_error", code=exc.code)


def _usage(result: dict) -> dict:
    usage = result.get("usage") if isinstance(result.get("usage"), dict) else {}
    prompt = usage.get("prompt_tokens") if isinstance(usage.get("prompt_tokens"), int) else 0
    completion = usage.get("completion_tokens") if isinstance(usage.get("completion_tokens"), int) else 0
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _sse(data: Any) -> bytes:
    return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"


def _stream_response(model: str, event: dict, chat: bool, include_usage: bool) -> Response:
    invocation = start_stream(_service(), model, None, json.dumps(event).encode())
    assert invocation is not None
    rid = ("chatcmpl-" if chat else "cmpl-") + invocation.request_id
    created = int(time.time())
    obj = "chat.completion.chunk" if chat else "text_completion"

    def chunk(piece: str | None, finish: str | None, role: bool = False) -> dict:
        if chat:
            delta: dict[str, Any] = {"role": "assistant", "content": ""} if role else \
                ({"content": piece} if piece is not None else {})
            choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": piece or "", "logprobs": None, "finish_reason": finish}
        return {"id": rid, "object": obj, "created": created, "model": model, "choices": [choice]}

    def events(inv: StreamingInvocation) -> Iterator[bytes]:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        if chat:
            yield _sse(chunk(None, None, role=True))
        for data in inv:
            text = decoder.decode(data)
            if text:
                yield _sse(chunk(text, None))
        tail = decoder.decode(b"", final=True)
        if tail:
            yield _sse(chunk(tail, None))
        end = inv.end
        if end.error_code:
            yield _sse({"error": {"message": f"The function failed: {end.error_details}", "type": "server_error",
                                  "param": None, "code": end.error_code}})
        else:
            metrics = (end.result.metrics if end.result else None) or {}
            finish = metrics.get("finish_reason") if metrics.get("finish_reason") in ("stop", "length") else "stop"
            yield _sse(chunk(None, finish))
            if include_usage:
                usage = _usage({"usage": metrics})
                yield _sse({"id": rid, "object": obj, "created": created, "model": model, "choices": [],
                            "usage": usage})
        yield b"data: [DONE]\n\n"

    resp = Response(events(invocation), mimetype="text/event-stream")
    resp.headers["Cache-Control"] = "no-cache"
    resp.headers["X-Accel-Buffering"] = "no"
    return resp


@bp.post("/completions")
def completions() -> Response:
    body = _body()
    model, event, stream, include_usage = _common(body, DEFAULT_COMPLETION_TOKENS, ("max_tokens",))
    event["prompt"] = _prompt(body)
    if stream:
        return _stream_response(model, event, chat=False, include_usage=include_usage)
    result, request_id = _invoke(model, event)
    return _json({
        "id": f"cmpl-{request_id}", "object": "text_completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "text": result["text"], "logprobs": None,
                     "finish_reason": result.get("finish_reason") or "stop"}],
        "usage": _usage(result),
    })


@bp.post("/chat/completions")
def chat_completions() -> Response:
    body = _body()
    model, event, stream, include_usage = _common(body, DEFAULT_CHAT_TOKENS, ("max_completion_tokens", "max_tokens"))
    event["messages"] = _messages(body)
    if stream:
        return _stream_response(model, event, chat=True, include_usage=include_usage)
    result, request_id = _invoke(model, event)
    return _json({
        "id": f"chatcmpl-{request_id}", "object": "chat.completion", "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": result["text"]}, "logprobs": None,
                     "finish_reason": result.get("finish_reason") or "stop"}],
        "usage": _usage(result),
    })


def _model(name: str, created: float) -> dict:
    return {"id": name, "object": "model", "created": int(created), "owned_by": "slfaas"}


@bp.get("/models")
def list_models() -> Response:
    svc = _service()
    data, marker = [], None
    while True:
        page, marker = svc.list_functions(marker, 1000)
        data.extend(_model(r.name, r.created_ts) for r in page)
        if not marker:
            break
    return _json({"object": "list", "data": data})


@bp.get("/models/<path:model>")
def get_model(model: str) -> Response:
    rec = _service().get_function(model)
    return _json(_model(model if ":" in model else rec.name, rec.created_ts))


