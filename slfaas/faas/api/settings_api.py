"""Lambda REST API: reserved and provisioned concurrency, account settings, tags. These
operations live under other API dates than the function operations, hence no url_prefix."""
from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, request

from slfaas.errors import InvalidParameter
from slfaas.faas.api.lambda_api import _json, _json_body
from slfaas.faas.service import FunctionService

bp = Blueprint("lambda_settings_api", __name__)


def _service() -> FunctionService:
    return current_app.extensions["slfaas.service"]


def _qualifier() -> str | None:
    return request.args.get("Qualifier") or None


# reserved concurrency
@bp.put("/2017-10-31/functions/<name>/concurrency")
def put_function_concurrency(name: str) -> Response:
    reserved = _service().limits.put_reserved(name, _json_body())
    return _json({"ReservedConcurrentExecutions": reserved})


@bp.get("/2019-09-30/functions/<name>/concurrency")
def get_function_concurrency(name: str) -> Response:
    reserved = _service().limits.get_reserved(name)
    return _json({} if reserved is None else {"ReservedConcurrentExecutions": reserved})


@bp.delete("/2017-10-31/functions/<name>/concurrency")
def delete_function_concurrency(name: str) -> Response:
    _service().limits.delete_reserved(name)
    return Response(status=204)


# provisioned concurrency
@bp.put("/2019-09-30/functions/<name>/provisioned-concurrency")
def put_provisioned_concurrency_config(name: str) -> Response:
    return _json(_service().limits.put_provisioned(name, _qualifier(), _json_body()), 202)


@bp.get("/2019-09-30/functions/<name>/provisioned-concurrency")
def get_provisioned_concurrency_config(name: str) -> Response:
    limits = _service().limits
    if request.args.get("List") is None:
        return _json(limits.get_provisioned(name, _qualifier()))
    max_items = request.args.get("MaxItems")
    try:
        limit = int(max_items) if max_items is not None else None
    except ValueError:
        raise InvalidParameter(f"MaxItems must be an integer, got {max_items!r}")
    page, marker = limits.list_provisioned(name, request.args.get("Marker"), limit)
    body: dict[str, Any] = {"ProvisionedConcurrencyConfigs": page}
    if marker:
        body["NextMarker"] = marker
    return _json(body)


@bp.delete("/2019-09-30/functions/<name>/provisioned-concurrency")
def delete_provisioned_concurrency_config(name: str) -> Response:
    _service().limits.delete_provisioned(name, _qualifier())
    return Response(status=204)


# account
@bp.get("/2016-08-19/account-settings", strict_slashes=False)
def get_account_settings() -> Response:
    return _json(_service().limits.account_settings())


# tags
@bp.post("/2017-03-31/tags/<resource>")
def tag_resource(resource: str) -> Response:
    body = _json_body()
    if "Tags" not in body:
        raise InvalidParameter("Tags is required")
    _service().tags.tag(resource, body["Tags"])
    return Response(status=204)


@bp.delete("/2017-03-31/tags/<resource>")
def untag_resource(resource: str) -> Response:
    _service().tags.untag(resource, request.args.getlist("tagKeys"))
    return Response(status=204)


@bp.get("/2017-03-31/tags/<resource>")
def list_tags(resource: str) -> Response:
    return _json({"Tags": _service().tags.list(resource)})
