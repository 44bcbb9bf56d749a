"""slfaas's own endpoints (no Lambda equivalent): base models, logs, invocation records, node."""
from __future__ import annotations

import time
from dataclasses import asdict

from flask import Blueprint, Response, current_app, request, send_file

from slfaas.billing.service import parse_when
from slfaas.errors import InvalidParameter, NotFound
from slfaas.faas.api.lambda_api import _json, _json_body
from slfaas.faas.log_tail import LOG_OFFSET_HEADER
from slfaas.faas.service import FunctionService
from slfaas.gpu_node.types import NodeInfo, PoolInfo

bp = Blueprint("slfaas_api", __name__, url_prefix="/slfaas/v1")


def _service() -> FunctionService:
    return current_app.extensions["slfaas.service"]


@bp.get("/health")
def health() -> Response:
    return _json({"status": "ok"})


@bp.get("/models")
def list_models() -> Response:
    return _json({"Models": [{"Name": m.name, "Path": m.path} for m in _service().registry.list_base_models()]})


@bp.post("/models")
def add_model() -> Response:
    body = _json_body()
    name, path = body.get("Name"), body.get("Path")
    if not isinstance(name, str) or not isinstance(path, str):
        raise InvalidParameter("Name and Path (strings) are required")
    return _json(_service().add_base_model(name, path), 201)


@bp.delete("/models/<name>")
def delete_model(name: str) -> Response:
    try:
        _service().registry.delete_base_model(name)
    except NotFound:
        raise NotFound(f"Model not found: {name}")
    return Response(status=204)


@bp.get("/functions/<name>/logs")
def function_logs(name: str) -> Response:
    """The log's last ``max_bytes``; or, with ``offset`` (the previous response's
    X-Slfaas-Log-Offset) or ``since`` (a time, as cost reports take it), whole lines from there.
    X-Slfaas-Log-Offset says where the next read continues (``logs --follow`` polls with it)."""
    svc = _service()
    svc.get_function(name)
    max_bytes = max(1, min(_int_arg("max_bytes", 256 * 1024), 16 << 20))
    offset = _int_arg("offset", -1) if "offset" in request.args else None
    if offset is not None and offset < 0:
        raise InvalidParameter("offset must be a non-negative integer")
    since = request.args.get("since") or None
    since_ts = parse_when(since, time.time()) if since else None
    chunk = svc.node.logs(name, max_bytes, offset=offset, since_ts=since_ts)
    resp = Response(chunk.text, mimetype="text/plain")
    resp.headers[LOG_OFFSET_HEADER] = str(chunk.next_offset)
    return resp


def _int_arg(name: str, default: int) -> int:
    try:
        return int(request.args.get(name, default))
    except ValueError:
        raise InvalidParameter(f"{name} must be an integer") from None


@bp.get("/invocations")
def list_invocations() -> Response:
    limit = _int_arg("limit", 100)
    records = _service().registry.list_invocations(request.args.get("function"), max(1, min(limit, 10000)))
    return _json({"Invocations": [asdict(r) for r in records]})


@bp.get("/invocations/<request_id>")
def get_invocation(request_id: str) -> Response:
    svc = _service()
    # the event row first: an attempt writes its invocation row before the event's status, so a
    # final status read here comes with that attempt's record (read the other way round, a
    # retry's success could come with the record as it was while running)
    event = svc.events.details(request_id)
    body = asdict(svc.registry.get_invocation(request_id))
    if event is not None:
        body["event"] = event  # InvocationType=Event: attempts and the last attempt's result
    return _json(body)


@bp.get("/node")
def node_status() -> Response:
    """The nodes as one (as when there was one node: its id, device, instances...), each
    instance with the node it runs on, and ``Nodes``: each node's own report."""
    info = _service().node.describe(checksums=request.args.get("checksums") in ("1", "true"))
    members = info.nodes or (info,)
    where = {i.instance_id: n.node_id for n in members for i in n.instances}
    return _json({
        **_node_report(info),
        "Instances": [{**asdict(i), "node_id": where.get(i.instance_id, info.node_id)} for i in info.instances],
        "Nodes": [{"NodeId": n.node_id, "State": n.state, "Host": n.host, **{k: v for k, v in _node_report(n).items()
                                                                            if k != "NodeId"},
                   "Instances": len([i for i in n.instances if i.alive])} for n in members],
    })


def _node_report(info: NodeInfo) -> dict:
    return {
        "NodeId": info.node_id,
        "Device": info.device,
        "Sandbox": info.sandbox,
        "BackboneMode": info.backbone_mode,
        "MaxInstances": info.max_instances,
        "Backbones": [{k: v for k, v in asdict(b).items() if k != "sha256" or v is not None} for b in info.backbones],
        "Gpu": asdict(info.gpu) if info.gpu is not None else None,
        # generic runtimes (--warm-pool) and runtimes pre-warmed per backbone
        "Pools": [_pool(p) for p in info.pools],
        "Tiers": [asdict(t) for t in info.tiers],
        "Preload": asdict(info.preload) if info.preload is not None else None,
        # provisioned concurrency: instances held per function version
        "Provisioned": [asdict(p) for p in info.provisioned],
        "KeepAlivePolicy": info.keep_alive_policy,
    }


def _pool(p: PoolInfo) -> dict:
    out = {"name": p.name, "sandbox": p.sandbox, "held": p.held, "target": p.target, "ready": p.ready}
    if p.base_model is not None:
        out.update(base_model=p.base_model, device=p.device)
    return out


@bp.post("/node/verify")
def node_verify() -> Response:
    """Check every backbone now; a mismatch stops its instances and reloads it."""
    events = _service().node.verify()
    return _json({"Checks": [asdict(e) for e in events]})


@bp.get("/node/integrity")
def node_integrity() -> Response:
    failures_only = request.args.get("failures") in ("1", "true")
    return _json({"Events": _service().registry.list_integrity_events(failures_only)})


@bp.get("/code/<sha256_hex>.zip")
def download_code(sha256_hex: str) -> Response:
    if len(sha256_hex) != 64 or not all(c in "0123456789abcdef" for c in sha256_hex):
        raise NotFound("no such code package")
    path = _service().code.root / f"{sha256_hex}.zip"
    if not path.is_file():
        raise NotFound("no such code package")
    return send_file(path, mimetype="application/zip")
