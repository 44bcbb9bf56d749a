"""FunctionService: the control plane's operations on functions, independent of HTTP.

Create/update validate the code and the adapter against its base model synchronously (header
reads, milliseconds), store the function as Pending, and let a background step make the
backbone resident on the node before the function turns Active.
"""
from __future__ import annotations

import base64
import binascii
import json
import logging
import threading
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from slfaas.errors import (Conflict, InvalidParameter, InvalidRequestContent, InvocationCancelled, NodeError, NotFound,
                           RequestTooLarge, TooManyRequests)
from slfaas.billing.service import CostService
from slfaas.faas.admission import DEFAULT_MAX_CONCURRENT_INVOCATIONS, DisconnectWatch, InvocationSlots
from slfaas.faas.base_models import add_base_model, resolve_base_model
from slfaas.faas.code import CodePackage, CodeStore, check_adapter_fits
from slfaas.faas.naming import NAME_RE, function_arn, parse_function_ref
from slfaas.faas.params import MAX_DESCRIPTION_CHARS, MAX_HANDLER_CHARS, MAX_ROLE_CHARS, text_param
from slfaas.faas.registry import LATEST, FunctionRecord, InvocationRecord, Registry
from slfaas.faas.event_invoker import EventInvoker
from slfaas.faas.function_config import (BASE_MODEL_ENV, environment_param, function_spec, int_param, opt_float,
                                         opt_int)
from slfaas.faas.function_settings import parse_function_settings
from slfaas.faas.limits import Limits
from slfaas.faas.metrics import ControlPlaneMetrics
from slfaas.faas.log_tail import invocation_log, log_result_header
from slfaas.faas.tags import Tags, validate_tags
from slfaas.faas.versions import Versions, precondition_failed
from slfaas.faas.s3code import S3CodeFetcher, wants_s3
from slfaas.gpu_node.api import NodeApi
from slfaas.gpu_node.types import FunctionSpec, InvocationRequest, InvocationResult

log = logging.getLogger(__name__)

RUNTIME = "slfaas-lora"
DEFAULT_HANDLER = "slfaas.lora"
DEFAULT_TIMEOUT_S = 60
DEFAULT_MEMORY_MB = 2048
MAX_SYNC_PAYLOAD_BYTES = 6 * 1024 * 1024
MAX_ASYNC_PAYLOAD_BYTES = 1024 * 1024
TAIL_SCAN_BYTES = 1 << 20   # how much of a function's log LogType=Tail searches for the invocation
CANCELLED_MESSAGE = "The caller disconnected; the invocation was stopped."


@dataclass(frozen=True)
class InvokeOutcome:
    status_code: int
    payload: bytes
    function_error: str | None
    executed_version: str
    request_id: str
    log_tail: str | None = None


def _now_lambda() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000+0000", time.gmtime())


class FunctionService:
    def __init__(self, registry: Registry, node: NodeApi, code_root: Path, region: str = "us-east-1",
                 public_url: Callable[[], str] = lambda: "http://127.0.0.1", s3_endpoint_url: str | None = None,
                 cost: CostService | None = None, metrics: ControlPlaneMetrics | None = None,
                 max_concurrent_invocations: int = DEFAULT_MAX_CONCURRENT_INVOCATIONS):
        """``cost``: the billing service fed by the node's meter (the server makes both); without
        it, records are priced with the default sheet and no live node usage is reported."""
        self.registry = registry
        self.node = node
        self.slots = InvocationSlots(max_concurrent_invocations)   # beyond it: 429 at once
        self.disconnects = DisconnectWatch(node.cancel)
        self.code = CodeStore(code_root, in_use=registry.code_in_use)
        self.code.sweep()   # what a crash or an older version left behind
        self.s3_code = S3CodeFetcher(s3_endpoint_url, region)
        self.region = region
        self.public_url = public_url
        self.versions = Versions(self)
        self.tags = Tags(self)
        # The account's concurrency limit is what the node can hold at once (one invocation per
        # instance, or more where its scheduler queues and batches them).
        self.limits = Limits(self, node.describe().max_concurrency)
        self.cost = cost or CostService(registry)
        self.metrics = metrics or ControlPlaneMetrics()   # the server passes one on the node's registry
        self.cost.on_budget_warning = self._budget_warning
        self.events = EventInvoker(self)
        n = registry.mark_interrupted_invocations()
        if n:
            log.warning("%d invocation(s) were cut off by the previous node stop; marked interrupted", n)
        n = self.events.resume()
        if n:
            log.info("resuming %d queued asynchronous invocation(s)", n)
        self.limits.sync()   # provisioned concurrency configured before a restart is held again

    # base models
    def resolve_base_model(self, ref: str) -> Path:
        """A registered model name (``slfaas models add``) or a local model directory."""
        return resolve_base_model(self.registry, ref)

    def add_base_model(self, name: str, path: str) -> dict:
        return add_base_model(self.registry, name, path)

    # functions
    def _base_model_for(self, env: dict[str, str], pkg: CodePackage) -> Path:
        ref = env.get(BASE_MODEL_ENV) or pkg.adapter_base_model
        if not ref:
            raise InvalidParameter(
                f"No base model: set Environment.Variables.{BASE_MODEL_ENV} or base_model_name_or_path "
                f"in adapter_config.json")
        base = self.resolve_base_model(ref)
        check_adapter_fits(pkg.dir_path, base)
        if parse_function_settings(env).shared_execution and pkg.has_handler:
            raise InvalidParameter("SLFAAS_SHARED_EXECUTION=1 runs the function in a runtime shared with other "
                                   "functions, which runs the built-in handler only: remove handler.py from the "
                                   "code or set SLFAAS_SHARED_EXECUTION=0")
        return base

    def _code_bytes(self, code: Any) -> bytes:
        """The code zip a request gives (inline or on S3); ``self.code.hold`` stores it."""
        if not isinstance(code, dict):
            raise InvalidParameter("Code must be an object with ZipFile or S3Bucket and S3Key")
        if "ImageUri" in code:
            raise InvalidParameter("Only Zip code is supported by this server (Code.ImageUri is not)")
        if "ZipFile" not in code:
            if wants_s3(code):
                return self.s3_code.fetch(code)
            raise InvalidParameter("Please provide a source for function code: Code.ZipFile or Code.S3Bucket "
                                   "and Code.S3Key")
        if wants_s3(code):
            raise InvalidParameter("Please do not provide other FunctionCode parameters when providing a ZipFile.")
        try:
            return base64.b64decode(code["ZipFile"], validate=True)
        except (binascii.Error, TypeError, ValueError):
            raise InvalidParameter("Code.ZipFile is not valid base64")

    def create_function(self, params: dict) -> FunctionRecord:
        name = params.get("FunctionName")
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise InvalidParameter(f"FunctionName must match [a-zA-Z0-9-_]{{1,64}}, got {name!r}")
        runtime = params.get("Runtime")
        if runtime != RUNTIME:
            raise InvalidParameter(
                f"The runtime parameter of {runtime} is not supported: use Runtime='{RUNTIME}'")
        if params.get("PackageType", "Zip") != "Zip":
            raise InvalidParameter("Only PackageType Zip is supported")
        role = params.get("Role")
        if not isinstance(role, str) or not role:
            raise InvalidParameter("Role is required")
        role = text_param(params, "Role", "", MAX_ROLE_CHARS)
        description = text_param(params, "Description", "", MAX_DESCRIPTION_CHARS)
        handler = text_param(params, "Handler", DEFAULT_HANDLER, MAX_HANDLER_CHARS)
        try:
            self.registry.get_function(name)
            raise Conflict(f"Function already exist: {name}")
        except NotFound:
            pass
        env = environment_param(params) or {}
        tags = validate_tags(params["Tags"]) if params.get("Tags") is not None else {}
        timeout_s = int_param(params, "Timeout", DEFAULT_TIMEOUT_S, 1, 900)
        memory_mb = int_param(params, "MemorySize", DEFAULT_MEMORY_MB, 128, 10240)
        with self.code.hold(self._code_bytes(params.get("Code"))) as pkg:   # gone again if refused
            base = self._base_model_for(env, pkg)
            rec = FunctionRecord(
                name=name, version=LATEST, runtime=RUNTIME, role=role, handler=handler,
                description=description, timeout_s=timeout_s, memory_mb=memory_mb,
                environment=env, code_sha256_hex=pkg.sha256_hex, code_size_bytes=pkg.size_bytes,
                base_model_path=str(base), state="Pending", state_reason="The function is being created.",
                state_reason_code="Creating", last_update_status="InProgress",
                last_update_status_reason="The function is being created.",
                revision_id=str(uuid.uuid4()), last_modified=_now_lambda(), created_ts=time.time())
            self.registry.insert_function(rec)
        if tags:
            self.registry.put_tags(name, tags)
        # Make this the current revision of $LATEST on the node.
        self.node.retire(name, keep_revision=rec.revision_id, version=LATEST)
        self._activate_async(rec)
        if params.get("Publish"):
            return self.versions.snapshot(rec)
        return rec

    def _activate_async(self, rec: FunctionRecord) -> None:
        threading.Thread(target=self._activate, args=(rec,), daemon=True, name=f"activate-{rec.name}").start()

    def _activate(self, rec: FunctionRecord) -> None:
        try:
            self.node.prepare(self.spec(rec))
            changes = dict(state="Active", state_reason="", state_reason_code="",
                           last_update_status="Successful", last_update_status_reason="")
        except (NodeError, OSError) as exc:
            log.error("function %s failed to activate: %s", rec.name, exc)
            changes = dict(state="Failed", state_reason=str(exc), state_reason_code="InternalError",
                           last_update_status="Failed", last_update_status_reason=str(exc))
        try:
            self.registry.update_function(rec.name, expected_revision=rec.revision_id, version=rec.version, **changes)
        except (NotFound, Conflict):
            pass  # deleted or updated meanwhile: the newer change activates itself

    def get_function(self, ref: str, qualifier: str | None = None) -> FunctionRecord:
        """$LATEST, a published version, or the version an alias points at."""
        return self.versions.resolve(ref, qualifier).record

    def list_functions(self, marker: str | None, max_items: int | None) -> tuple[list[FunctionRecord], str | None]:
        limit = 50 if max_items is None else max_items
        if not 1 <= limit <= 10000:
            raise InvalidParameter("MaxItems must be between 1 and 10000")
        after = None
        if marker:
            try:
                after = base64.b64decode(marker.encode(), altchars=b"-_", validate=True).decode()
            except (binascii.Error, UnicodeDecodeError, ValueError):
                raise InvalidParameter(f"Invalid Marker: {marker}")
        page = self.registry.list_functions(after, limit + 1)
        next_marker = None
        if len(page) > limit:
            page = page[:limit]
            next_marker = base64.urlsafe_b64encode(page[-1].name.encode()).decode()
        return page, next_marker

    def update_code(self, ref: str, params: dict) -> FunctionRecord:
        rec = self.versions.latest(ref)
        self._check_revision(rec, params)
        raw = self._code_bytes({k: v for k, v in params.items() if k in ("ZipFile", "S3Bucket", "S3Key",
                                                                         "S3ObjectVersion", "ImageUri")})
        with self.code.hold(raw) as pkg:   # gone again if refused
            base = self._base_model_for(rec.environment, pkg)
            updated = self._apply_update(rec, code_sha256_hex=pkg.sha256_hex, code_size_bytes=pkg.size_bytes,
                                         base_model_path=str(base))
        self.code.collect(rec.code_sha256_hex)   # the old code, unless a version still uses it
        return self.versions.snapshot(updated) if params.get("Publish") else updated

    def update_configuration(self, ref: str, params: dict) -> FunctionRecord:
        rec = self.versions.latest(ref)
        self._check_revision(rec, params)
        changes: dict[str, Any] = {}
        if "Runtime" in params and params["Runtime"] != RUNTIME:
            raise InvalidParameter(f"The runtime parameter of {params['Runtime']} is not supported")
        if "Role" in params:
            changes["role"] = text_param(params, "Role", rec.role, MAX_ROLE_CHARS)
        if "Handler" in params:
            changes["handler"] = text_param(params, "Handler", DEFAULT_HANDLER, MAX_HANDLER_CHARS)
        if "Description" in params:
            changes["description"] = text_param(params, "Description", "", MAX_DESCRIPTION_CHARS)
        if "Timeout" in params:
            changes["timeout_s"] = int_param(params, "Timeout", rec.timeout_s, 1, 900)
        if "MemorySize" in params:
            changes["memory_mb"] = int_param(params, "MemorySize", rec.memory_mb, 128, 10240)
        env = environment_param(params)
        if env is not None:
            changes["environment"] = env
            pkg = self.code.get(rec.code_sha256_hex)
            changes["base_model_path"] = str(self._base_model_for(env, pkg))
        return self._apply_update(rec, **changes)

    def _check_revision(self, rec: FunctionRecord, params: dict) -> None:
        expected = params.get("RevisionId")
        if expected and expected != rec.revision_id:
            raise precondition_failed()

    def _apply_update(self, rec: FunctionRecord, **changes: Any) -> FunctionRecord:
        if rec.last_update_status == "InProgress":
            raise Conflict(f"The operation cannot be performed at this time. An update is in progress for "
                           f"resource: {function_arn(self.region, rec.name)}")
        new_revision = str(uuid.uuid4())
        updated = self.registry.update_function(
            rec.name, expected_revision=rec.revision_id, revision_id=new_revision,
            last_modified=_now_lambda(), last_update_status="InProgress",
            last_update_status_reason="The function is being updated.", **changes)
        self.node.retire(rec.name, keep_revision=new_revision, version=LATEST)
        self._activate_async(updated)
        return updated

    def delete_function(self, ref: str, qualifier: str | None = None) -> None:
        fn = parse_function_ref(ref, qualifier)
        rec = self.versions.latest(fn.name)
        if fn.qualifier is not None:  # one published version
            self.versions.delete_version(rec.name, fn.qualifier)
            return
        codes = {rec.code_sha256_hex} | {v.code_sha256_hex for v in self.registry.list_versions(rec.name)}
        self.registry.delete_function(rec.name)
        self.limits.forget(rec.name)
        self.node.retire(rec.name, keep_revision=None)
        self.node.delete_logs(rec.name)
        for sha256_hex in codes:
            self.code.collect(sha256_hex)

    # invocation
    def spec(self, rec: FunctionRecord) -> FunctionSpec:
        return function_spec(rec, self.region, self.code.root)

    def select_version(self, ref: str, qualifier: str | None) -> tuple[FunctionRecord, str]:
        """The version one invocation of ``ref``/``qualifier`` runs (an alias's routing draws
        it), and the ARN it was invoked by (the handler's ``context.invoked_function_arn``)."""
        target = self.versions.resolve(ref, qualifier)
        rec = self.versions.choose(target)
        return rec, function_arn(self.region, rec.name, target.qualifier)

    def invocation_target(self, ref: str, qualifier: str | None, payload: bytes, log_type: str | None,
                          max_payload_bytes: int, operation: str) -> tuple[FunctionRecord, str]:
        """The checks every invoke API makes, in AWS's order, and the version it runs with the
        ARN it was invoked by (see ``select_version``)."""
        check_log_type(log_type)
        rec, invoked_arn = self.select_version(ref, qualifier)
        if rec.state != "Active":
            raise Conflict(f"The operation cannot be performed at this time. The function is currently in the "
                           f"following state: {rec.state}")
        if len(payload) > max_payload_bytes:
            raise RequestTooLarge(f"Request must be smaller than {max_payload_bytes} bytes for the {operation} "
                                  f"operation")
        if payload.strip():
            try:
                json.loads(payload)
            except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # too deeply nested: RecursionError
                raise InvalidRequestContent(f"Could not parse request body into json: {exc}")
        return rec, invoked_arn

    def invoke(self, ref: str, qualifier: str | None, payload: bytes, invocation_type: str = "RequestResponse",
               client_context: str | None = None, log_type: str | None = None,
               client_gone: Callable[[], bool] | None = None) -> InvokeOutcome:
        """``client_gone``: tells whether the caller disconnected; its invocation is then
        cancelled on the node and recorded as such."""
        if invocation_type not in ("RequestResponse", "Event", "DryRun"):
            raise InvalidParameter(f"Unsupported InvocationType: {invocation_type}")
        if invocation_type == "Event":
            rec, invoked_arn = self.invocation_target(ref, qualifier, payload, log_type, MAX_ASYNC_PAYLOAD_BYTES,
                                                      "InvokeAsync")
            request_id = str(uuid.uuid4())
            self.events.enqueue(request_id, rec, invoked_arn, payload or b"{}", client_context)
            return InvokeOutcome(202, b"", None, rec.version, request_id)
        if invocation_type == "DryRun":
            rec, _arn = self.invocation_target(ref, qualifier, payload, log_type, MAX_SYNC_PAYLOAD_BYTES,
                                               "InvokeFunction")
            return InvokeOutcome(204, b"", None, rec.version, str(uuid.uuid4()))
        check_log_type(log_type)   # the free checks before the slot; the rest once it is held
        # the slot first: a saturated server sheds a burst before any registry work for it (a
        # burst's 429s otherwise cost the interpreter that health and control share)
        with self.slots.slot():
            rec, invoked_arn = self.invocation_target(ref, qualifier, payload, log_type, MAX_SYNC_PAYLOAD_BYTES,
                                                      "InvokeFunction")
            request_id = str(uuid.uuid4())
            request = InvocationRequest(request_id, replace(self.spec(rec), arn=invoked_arn), payload or b"{}",
                                        client_context)
            record = InvocationRecord(request_id=request_id, function_name=rec.name, version=rec.version,
                                      status="running", start_ts=time.time(), code_sha256_hex=rec.code_sha256_hex)
            self.registry.record_invocation(record)
            result = self._run(request, record, client_gone)
        log_tail = None
        if log_type == "Tail":
            log_tail = log_result_header(invocation_log(self.node.logs(rec.name, TAIL_SCAN_BYTES).text, request_id,
                                                        result.instance_id))
        return InvokeOutcome(200, result.payload, result.function_error, rec.version, request_id, log_tail)

    def _budget_warning(self, function_name: str | None, message: str) -> None:
        if function_name:
            try:
                self.node.write_log(function_name, "billing", message)
            except Exception:  # a log line must never fail an invocation
                log.exception("writing a budget warning to %s's log failed", function_name)

    def _run(self, request: InvocationRequest, record: InvocationRecord,
             client_gone: Callable[[], bool] | None = None) -> InvocationResult:
        cancelled = threading.Event()
        try:
            self.cost.admit(request.function.name, request.request_id)   # hard budgets, enforced
            with (self.limits.tracker.lease(request.function.name),   # reserved concurrency, enforced
                  self.disconnects.watching(request.request_id, client_gone) as cancelled):
                result = self.node.invoke(request)
        except BaseException as exc:
            status = ("cancelled" if cancelled.is_set() or isinstance(exc, InvocationCancelled) else
                      "throttled" if isinstance(exc, TooManyRequests) else "failed")
            message = f"{CANCELLED_MESSAGE} {exc}" if status == "cancelled" else str(exc)
            self.registry.finish_invocation(record, status=status, end_ts=time.time(),
                                            error_type=exc.__class__.__name__, error_message=message)
            if isinstance(exc, TooManyRequests):
                self.metrics.throttled(request.function.name, exc.reason)
            raise
        finally:
            self.cost.release(request.request_id)   # no-op once its usage record settled it
        usage: dict = {}
        metrics: dict = {}
        if result.function_error is None:
            try:
                body = json.loads(result.payload)
                if isinstance(body, dict):
                    usage = body.get("usage") if isinstance(body.get("usage"), dict) else {}
                    metrics = body.get("metrics") if isinstance(body.get("metrics"), dict) else {}
            except ValueError:
                pass
        message = ""
        if result.function_error:
            try:
                message = str(json.loads(result.payload).get("errorMessage", ""))[:2000]
            except (ValueError, AttributeError):
                message = ""
        status = "success" if result.function_error is None else "function_error"
        if cancelled.is_set():
            status, message = "cancelled", f"{CANCELLED_MESSAGE} {message}".strip()
        self.registry.finish_invocation(
            record, status=status,
            instance_id=result.instance_id, end_ts=result.end_ts, duration_ms=result.duration_ms,
            init_duration_ms=result.init_duration_ms, queue_ms=result.queue_ms, cold_start=result.cold_start,
            error_type=result.error_type, error_message=message,
            prompt_tokens=opt_int(usage.get("prompt_tokens")),
            completion_tokens=opt_int(usage.get("completion_tokens")),
            ttft_ms=opt_float(metrics.get("ttft_ms")))
        return result

    def code_location(self, rec: FunctionRecord) -> str:
        return f"{self.public_url()}/slfaas/v1/code/{rec.code_sha256_hex}.zip"


def check_log_type(log_type: str | None) -> None:
    if log_type not in (None, "", "None", "Tail"):
        raise InvalidParameter(f"1 validation error detected: Value '{log_type}' at 'logType' failed to "
                               f"satisfy constraint: Member must satisfy enum value set: [Tail, None]")
