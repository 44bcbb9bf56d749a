"""The HTTP API: the Lambda REST API plus slfaas's own endpoints, on one Flask app."""
from __future__ import annotations

from flask import Flask
from werkzeug.exceptions import HTTPException

from slfaas.errors import SlfaasError
from slfaas.faas.api import cost_api, errors, lambda_api, openai_api, slfaas_api, streaming
from slfaas.faas.api import metrics_api, settings_api, versions_api
from slfaas.faas.service import FunctionService

MAX_REQUEST_BYTES = 512 * 1024 * 1024


def create_app(service: FunctionService) -> Flask:
    app = Flask("slfaas")
    app.config["MAX_CONTENT_LENGTH"] = MAX_REQUEST_BYTES
    app.extensions["slfaas.service"] = service
    app.register_blueprint(lambda_api.bp)
    app.register_blueprint(versions_api.bp)
    app.register_blueprint(settings_api.bp)
    app.register_blueprint(slfaas_api.bp)
    app.register_blueprint(streaming.bp)
    app.register_blueprint(openai_api.bp)
    app.register_blueprint(cost_api.bp)
    app.register_blueprint(metrics_api.bp)
    app.register_error_handler(SlfaasError, errors.from_domain)
    app.register_error_handler(HTTPException, errors.from_http)
    app.register_error_handler(Exception, errors.from_unexpected)
    return app
