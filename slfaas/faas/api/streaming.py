"""InvokeWithResponseStream (Lambda API 2021-11-15): the response as an AWS event stream.

Each chunk the function's runtime sends becomes one ``PayloadChunk`` event, written and flushed
at once (waitress sends every write: ``send_bytes`` is 1); the stream ends with one
``InvokeComplete`` event, carrying ``ErrorCode``/``ErrorDetails`` if the function failed.
boto3's ``invoke_with_response_stream`` yields these events as they arrive.
"""
from __future__ import annotations

import base64
from typing import Iterator

from flask import Blueprint, Response, current_app, request

from slfaas.errors import InvalidParameter
from slfaas.faas import eventstream
from slfaas.faas.service import FunctionService
from slfaas.faas.streaming import StreamingInvocation, start_stream

bp = Blueprint("lambda_streaming", __name__, url_prefix="/2021-11-15")


def _service() -> FunctionService:
    return current_app.extensions["slfaas.service"]


def _events(invocation: StreamingInvocation) -> Iterator[bytes]:
    for chunk in invocation:
        yield eventstream.payload_chunk(chunk)
    end = invocation.end
    yield eventstream.invoke_complete(end.error_code, end.error_details, end.log_result)


@bp.post("/functions/<name>/response-streaming-invocations")
def invoke_with_response_stream(name: str) -> Response:
    client_context = request.headers.get("X-Amz-Client-Context")
    if client_context:
        try:
            client_context = base64.b64decode(client_context, validate=True).decode()
        except (ValueError, UnicodeDecodeError):
            raise InvalidParameter("Client context must be a valid Base64-encoded JSON object.")
    invocation_type = request.headers.get("X-Amz-Invocation-Type", "RequestResponse")
    invocation = start_stream(_service(), name, request.args.get("Qualifier") or None,
                              request.get_data(cache=False), invocation_type, client_context,
                              request.headers.get("X-Amz-Log-Type"))
    if invocation is None:  # DryRun
        return Response(status=204)
    resp = Response(_events(invocation), status=200, mimetype=eventstream.CONTENT_TYPE)
    resp.headers["X-Amz-Executed-Version"] = invocation.executed_version
    resp.headers["x-amzn-RequestId"] = invocation.request_id
    resp.headers["X-Accel-Buffering"] = "no"   # a reverse proxy in front must not buffer the stream
    return resp
