"""A function's configuration: the request parameters checked (Timeout, MemorySize, the
Environment with the platform's own settings), the FunctionConfiguration shape AWS answers
with, and the ``FunctionSpec`` the node runs a version from (its keep-alive, batching and
shared-execution settings parsed here, so the node never reads a function's environment)."""
from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from slfaas.errors import InvalidParameter
from slfaas.faas.function_settings import SETTING_NAMES, parse_function_settings
from slfaas.faas.naming import function_arn
from slfaas.faas.registry import LATEST, FunctionRecord
from slfaas.gpu_node.types import FunctionSpec, KeepAliveSpec

BASE_MODEL_ENV = "SLFAAS_BASE_MODEL"
MAX_ENVIRONMENT_BYTES = 4096   # AWS: all variables together, measured as their JSON


def int_param(params: dict, key: str, default: int, low: int, high: int) -> int:
    value = params.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidParameter(f"{key} must be an integer, got {value!r}")
    if not low <= value <= high:
        raise InvalidParameter(
            f"1 validation error detected: Value '{value}' at '{key[0].lower() + key[1:]}' failed to satisfy "
            f"constraint: Member must have value {'greater' if value < low else 'less'} than or equal to "
            f"{low if value < low else high}")
    return value


def environment_param(params: dict) -> dict[str, str] | None:
    env = params.get("Environment")
    if env is None:
        return None
    if not isinstance(env, dict) or not isinstance(env.get("Variables", {}), dict):
        raise InvalidParameter("Environment must be an object with a Variables map")
    variables = env.get("Variables") or {}
    for k, v in variables.items():
        if not isinstance(v, str):
            raise InvalidParameter(f"Environment variable {k} must be a string")
        if not k or "=" in k or "\0" in k or "\0" in v:
            # the OS refuses these at exec: the function could never start
            raise InvalidParameter(f"Environment variable {k!r}: names must be non-empty without '=' "
                                   f"and names and values must not contain NUL characters")
        platform = k.startswith("SLFAAS_") and k != BASE_MODEL_ENV and k not in SETTING_NAMES
        if k.startswith("AWS_LAMBDA_") or platform or k == "_HANDLER":
            raise InvalidParameter(
                f"Lambda was unable to configure your environment variables because the environment variables "
                f"you have provided contains reserved keys that are currently not supported for modification. "
                f"Reserved keys used in this request: {k}")
    parse_function_settings(variables)
    size = len(json.dumps(variables, separators=(",", ":")).encode())
    if size > MAX_ENVIRONMENT_BYTES:
        raise InvalidParameter(
            f"Lambda was unable to configure your environment variables because the environment variables you "
            f"have provided exceeded the 4KB limit. String measured: {size} bytes of JSON, more than "
            f"{MAX_ENVIRONMENT_BYTES}")
    return dict(variables)


def function_spec(rec: FunctionRecord, region: str, code_root: Path) -> FunctionSpec:
    """What the node needs to run ``rec``'s version (its settings were validated when stored)."""
    settings = parse_function_settings(rec.environment)
    return FunctionSpec(
        name=rec.name, version=rec.version, revision_id=rec.revision_id,
        arn=function_arn(region, rec.name, None if rec.version == LATEST else rec.version),
        code_dir=code_root / rec.code_sha256_hex,
        base_model_path=Path(rec.base_model_path), handler=rec.handler, timeout_s=rec.timeout_s,
        memory_mb=rec.memory_mb, environment=rec.environment,
        keep_alive=KeepAliveSpec(settings.keep_alive_policy, settings.keep_alive_s, settings.keep_alive_bin_s),
        max_batch_size=settings.max_batch_size or 1, ttft_slo_ms=settings.ttft_slo_ms,
        shared_execution=settings.shared_execution)


def opt_int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def opt_float(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def configuration(rec: FunctionRecord, region: str, qualifier: str | None = None) -> dict:
    """The FunctionConfiguration shape of botocore's Lambda model. A version's FunctionArn
    carries its number; ``qualifier`` (a request's $LATEST or alias) overrides that."""
    out: dict[str, Any] = {
        "FunctionName": rec.name,
        "FunctionArn": function_arn(region, rec.name, qualifier or (None if rec.version == LATEST else rec.version)),
        "Runtime": rec.runtime,
        "Role": rec.role,
        "Handler": rec.handler,
        "CodeSize": rec.code_size_bytes,
        "Description": rec.description,
        "Timeout": rec.timeout_s,
        "MemorySize": rec.memory_mb,
        "LastModified": rec.last_modified,
        "CodeSha256": base64.b64encode(bytes.fromhex(rec.code_sha256_hex)).decode(),
        "Version": rec.version,
        "TracingConfig": {"Mode": "PassThrough"},
        "RevisionId": rec.revision_id,
        "State": rec.state,
        "LastUpdateStatus": rec.last_update_status,
        "PackageType": "Zip",
        "Architectures": ["x86_64"],
        "EphemeralStorage": {"Size": 512},
    }
    if rec.environment:
        out["Environment"] = {"Variables": dict(rec.environment)}
    if rec.state_reason:
        out["StateReason"] = rec.state_reason
        out["StateReasonCode"] = rec.state_reason_code
    if rec.last_update_status_reason:
        out["LastUpdateStatusReason"] = rec.last_update_status_reason
    return out
