"""Lambda REST API: PublishVersion, ListVersionsByFunction and the alias operations."""
from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, request

from slfaas.errors import InvalidParameter
from slfaas.faas.api.lambda_api import _json, _json_body
from slfaas.faas.function_config import configuration
from slfaas.faas.service import FunctionService

bp = Blueprint("lambda_versions_api", __name__, url_prefix="/2015-03-31")


def _service() -> FunctionService:
    return current_app.extensions["slfaas.service"]


def _max_items() -> int | None:
    value = request.args.get("MaxItems")
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise InvalidParameter(f"MaxItems must be an integer, got {value!r}")


@bp.post("/functions/<name>/versions")
def publish_version(name: str) -> Response:
    svc = _service()
    return _json(configuration(svc.versions.publish(name, _json_body()), svc.region), 201)


@bp.get("/functions/<name>/versions")
def list_versions_by_function(name: str) -> Response:
    svc = _service()
    page, marker = svc.versions.list_versions(name, request.args.get("Marker"), _max_items())
    body: dict[str, Any] = {"Versions": [configuration(r, svc.region, r.version) for r in page]}
    if marker:
        body["NextMarker"] = marker
    return _json(body)


@bp.post("/functions/<name>/aliases")
def create_alias(name: str) -> Response:
    svc = _service()
    return _json(svc.versions.alias_configuration(svc.versions.create_alias(name, _json_body())), 201)


@bp.get("/functions/<name>/aliases")
def list_aliases(name: str) -> Response:
    svc = _service()
    page, marker = svc.versions.list_aliases(name, request.args.get("FunctionVersion"), request.args.get("Marker"),
                                             _max_items())
    body: dict[str, Any] = {"Aliases": [svc.versions.alias_configuration(a) for a in page]}
    if marker:
        body["NextMarker"] = marker
    return _json(body)


@bp.get("/functions/<name>/aliases/<alias>")
def get_alias(name: str, alias: str) -> Response:
    svc = _service()
    return _json(svc.versions.alias_configuration(svc.versions.get_alias(name, alias)))


@bp.put("/functions/<name>/aliases/<alias>")
def update_alias(name: str, alias: str) -> Response:
    svc = _service()
    return _json(svc.versions.alias_configuration(svc.versions.update_alias(name, alias, _json_body())))


@bp.delete("/functions/<name>/aliases/<alias>")
def delete_alias(name: str, alias: str) -> Response:
    _service().versions.delete_alias(name, alias)
    return Response(status=204)
