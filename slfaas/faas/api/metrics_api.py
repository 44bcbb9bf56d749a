"""``GET /metrics``: the node's and the control plane's Prometheus metrics, in the text format.

Without authentication (a loopback server) anyone on the machine may scrape it; with
``--auth sigv4`` a scrape is a signed request like any other, or carries the configured
scrape token (``--metrics-token``) as ``Authorization: Bearer <token>`` (``auth.install``).
"""
from __future__ import annotations

from flask import Blueprint, Response, current_app

from slfaas.faas.metrics import CONTENT_TYPE
from slfaas.faas.service import FunctionService

bp = Blueprint("metrics", __name__)


@bp.get("/metrics")
def metrics() -> Response:
    service: FunctionService = current_app.extensions["slfaas.service"]
    return Response(service.metrics.render(), mimetype=None, content_type=CONTENT_TYPE)
