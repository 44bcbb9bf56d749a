"""The Lambda REST API (2015-03-31), as botocore's service model expects it."""
from __future__ import annotations

import base64
import json
from typing import Any, Callable

from flask import Blueprint, Response, current_app, request

from slfaas.errors import InvalidParameter, InvalidRequestContent
from slfaas.faas.function_config import configuration
from slfaas.faas.service import FunctionService

bp = Blueprint("lambda_api", __name__, url_prefix="/2015-03-31")


def _service() -> FunctionService:
    return current_app.extensions["slfaas.service"]


def _json_body() -> dict[str, Any]:
    raw = request.get_data(cache=False)
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # too deeply nested: RecursionError
        raise InvalidRequestContent(f"Could not parse request body into json: {exc}")
    if not isinstance(body, dict):
        raise InvalidRequestContent("Request body must be a JSON object")
    return body


def _json(data: Any, status: int = 200) -> Response:
    return Response(json.dumps(data), status=status, mimetype="application/json")


def client_gone() -> Callable[[], bool] | None:
    """waitress's probe of whether this request's client disconnected (it notices while the
    request runs because the server reads ahead: ``channel_request_lookahead``)."""
    return request.environ.get("waitress.client_disconnected")


def _qualifier() -> str | None:
    q = request.args.get("Qualifier")
    return q or None


@bp.post("/functions", strict_slashes=False)
def create_function() -> Response:
    svc = _service()
    rec = svc.create_function(_json_body())
    return _json(configuration(rec, svc.region), 201)


@bp.get("/functions", strict_slashes=False)
def list_functions() -> Response:
    svc = _service()
    max_items = request.args.get("MaxItems")
    try:
        limit = int(max_items) if max_items is not None else None
    except ValueError:
        raise InvalidParameter(f"MaxItems must be an integer, got {max_items!r}")
    page, marker = svc.list_functions(request.args.get("Marker"), limit)
    function_version = request.args.get("FunctionVersion")
    if function_version not in (None, "ALL"):
        raise InvalidParameter(f"1 validation error detected: Value '{function_version}' at 'functionVersion' failed "
                               f"to satisfy constraint: Member must satisfy enum value set: [ALL]")
    if function_version == "ALL":  # each function's published versions after its $LATEST
        page = [v for r in page for v in svc.registry.list_versions(r.name)]
    body: dict[str, Any] = {"Functions": [configuration(r, svc.region) for r in page]}
    if marker:
        body["NextMarker"] = marker
    return _json(body)


@bp.get("/functions/<name>")
def get_function(name: str) -> Response:
    svc = _service()
    target = svc.versions.resolve(name, _qualifier())
    rec = target.record
    body: dict[str, Any] = {
        "Configuration": configuration(rec, svc.region, target.qualifier),
        "Code": {"RepositoryType": "S3", "Location": svc.code_location(rec)},
    }
    tags = svc.registry.get_tags(rec.name)
    if tags:
        body["Tags"] = tags
    reserved = svc.registry.get_reserved_concurrency(rec.name)
    if reserved is not None:
        body["Concurrency"] = {"ReservedConcurrentExecutions": reserved}
    return _json(body)


@bp.get("/functions/<name>/configuration")
def get_function_configuration(name: str) -> Response:
    svc = _service()
    target = svc.versions.resolve(name, _qualifier())
    return _json(configuration(target.record, svc.region, target.qualifier))


@bp.put("/functions/<name>/configuration")
def update_function_configuration(name: str) -> Response:
    svc = _service()
    return _json(configuration(svc.update_configuration(name, _json_body()), svc.region))


@bp.put("/functions/<name>/code")
def update_function_code(name: str) -> Response:
    svc = _service()
    return _json(configuration(svc.update_code(name, _json_body()), svc.region))


@bp.delete("/functions/<name>")
def delete_function(name: str) -> Response:
    _service().delete_function(name, _qualifier())
    return Response(status=204)


@bp.post("/functions/<name>/invocations")
def invoke(name: str) -> Response:
    svc = _service()
    client_context = request.headers.get("X-Amz-Client-Context")
    if client_context:
        try:
            client_context = base64.b64decode(client_context, validate=True).decode()
            if not isinstance(json.loads(client_context), dict):
                raise ValueError("not an object")
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise InvalidParameter("Client context must be a valid Base64-encoded JSON object.")
    outcome = svc.invoke(name, _qualifier(), request.get_data(cache=False),
                         request.headers.get("X-Amz-Invocation-Type", "RequestResponse"), client_context,
                         log_type=request.headers.get("X-Amz-Log-Type"), client_gone=client_gone())
    resp = Response(outcome.payload, status=outcome.status_code, mimetype="application/json")
    resp.headers["X-Amz-Executed-Version"] = outcome.executed_version
    resp.headers["x-amzn-RequestId"] = outcome.request_id
    if outcome.function_error:
        resp.headers["X-Amz-Function-Error"] = outcome.function_error
    if outcome.log_tail is not None:
        resp.headers["X-Amz-Log-Result"] = outcome.log_tail
    return resp
