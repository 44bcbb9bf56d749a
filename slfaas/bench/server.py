"""What the replay asks of the server besides invocations: functions to replay against
(deployed from adapters, or checked to exist), the base model's directory (its tokenizer
builds the prompts), and afterwards the server's invocation records to join."""
from __future__ import annotations

import json
import time
import urllib.parse
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from slfaas.bench.errors import BenchError, TraceError

ROLE = "arn:aws:iam::000000000000:role/slfaas-bench"
LIST_LIMIT = 10000   # the API's largest page of invocation records


def _api(endpoint: str, method: str, path: str, body: Any = None) -> Any:
    from slfaas.client import CliError, api

    try:
        return api(endpoint, method, path, body)
    except CliError as exc:
        raise BenchError(str(exc)) from None


def _client(endpoint: str) -> Any:
    from slfaas.client import lambda_client

    return lambda_client(endpoint)


def _boto_errors() -> Any:
    from botocore.exceptions import BotoCoreError, ClientError

    return (BotoCoreError, ClientError)


def deploy_functions(endpoint: str, names: Sequence[str], adapters: Sequence[Path | str], *,
                     timeout_s: int = 900, memory_mb: int | None = None, wait_timeout_s: float = 600.0,
                     environment: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """Create (or update the code of) one function per name, function i from adapter
    ``i % len(adapters)``, then wait until all are Active: a replay's set-up in one call.
    ``environment``: every function's variables (e.g. SLFAAS_MAX_BATCH_SIZE)."""
    from slfaas.client import CliError, zip_adapter

    if not adapters:
        raise TraceError("give at least one adapter directory to deploy")
    try:
        zips = [zip_adapter(Path(a)) for a in adapters]
    except CliError as exc:
        raise TraceError(str(exc)) from None
    client = _client(endpoint)
    params: dict[str, Any] = {"Timeout": timeout_s}
    if memory_mb is not None:
        params["MemorySize"] = memory_mb
    if environment:
        params["Environment"] = {"Variables": dict(environment)}
    try:
        for i, name in enumerate(names):
            code = zips[i % len(zips)]
            try:
                client.create_function(FunctionName=name, Runtime="slfaas-lora", Role=ROLE, Handler="slfaas.lora",
                                       Code={"ZipFile": code}, **params)
            except client.exceptions.ResourceConflictException:
                client.update_function_code(FunctionName=name, ZipFile=code)
                client.get_waiter("function_updated_v2").wait(FunctionName=name,
                                                              WaiterConfig={"Delay": 0.5, "MaxAttempts": 1200})
                client.update_function_configuration(FunctionName=name, **params)
        deadline = time.monotonic() + wait_timeout_s
        for name in names:
            while True:
                cfg = client.get_function_configuration(FunctionName=name)
                if cfg["State"] == "Failed" or cfg.get("LastUpdateStatus") == "Failed":
                    raise BenchError(f"function {name} failed: "
                                     f"{cfg.get('StateReason') or cfg.get('LastUpdateStatusReason')}")
                if cfg["State"] == "Active" and cfg.get("LastUpdateStatus", "Successful") == "Successful":
                    break
                if time.monotonic() > deadline:
                    raise BenchError(f"function {name} not Active after {wait_timeout_s:g} s (state {cfg['State']})")
                time.sleep(0.2)
    except _boto_errors() as exc:
        raise _boto_error(endpoint, exc, "deploying: ") from None
    return tuple(names)


def check_functions(endpoint: str, names: Iterable[str]) -> None:
    """Every function exists: a typo fails before the replay, not as N errors in it."""
    client = _client(endpoint)
    try:
        for name in names:
            try:
                client.get_function_configuration(FunctionName=name)
            except client.exceptions.ResourceNotFoundException:
                raise TraceError(f"function {name} does not exist at {endpoint}; deploy the replay's "
                                 f"functions first (--deploy-adapters DIR)") from None
    except _boto_errors() as exc:
        raise _boto_error(endpoint, exc) from None


def resolve_model_dir(endpoint: str, adapters: Sequence[Path | str] = ()) -> Path:
    """The base model whose tokenizer builds the prompts: the first adapter's base (a local
    directory), else the server's only registered model when this machine can read it."""
    base = adapter_base_model(adapters)
    if base is not None:
        return base
    models = (_api(endpoint, "GET", "/slfaas/v1/models") or {}).get("Models", [])
    local = [Path(m["Path"]) for m in models if (Path(m.get("Path", "")) / "config.json").is_file()]
    if len(local) == 1:
        return local[0]
    raise TraceError("cannot tell which base model's tokenizer builds the prompts: give --model DIR")


def adapter_base_model(adapters: Sequence[Path | str]) -> Path | None:
    """The first adapter's base model, when it names a directory on this machine."""
    for adapter in adapters[:1]:
        try:
            base = json.loads((Path(adapter) / "adapter_config.json").read_text()).get("base_model_name_or_path")
        except (OSError, ValueError):
            base = None
        if base and (Path(base) / "config.json").is_file():
            return Path(base)
    return None


def fetch_invocations(endpoint: str, functions: Iterable[str], request_ids: Iterable[str]) -> dict[str, dict]:
    """The server's records of ``request_ids``: listed per function (newest first, one page),
    then fetched one by one for any the listing missed. Ids the server does not know are absent."""
    wanted = set(request_ids)
    found: dict[str, dict] = {}
    for name in sorted(set(functions)):
        query = urllib.parse.urlencode({"function": name, "limit": LIST_LIMIT})
        for rec in (_api(endpoint, "GET", f"/slfaas/v1/invocations?{query}") or {}).get("Invocations", []):
            if rec.get("request_id") in wanted:
                found[rec["request_id"]] = rec
    for rid in sorted(wanted - found.keys()):
        try:
            found[rid] = _api(endpoint, "GET", f"/slfaas/v1/invocations/{urllib.parse.quote(rid, safe='')}")
        except BenchError:
            continue   # not recorded (e.g. refused before it was)
    return found


def _boto_error(endpoint: str, exc: BaseException, doing: str = "") -> BenchError:
    from botocore.exceptions import ConnectTimeoutError, EndpointConnectionError

    from slfaas.client import unreachable

    if isinstance(exc, (EndpointConnectionError, ConnectTimeoutError)):
        return BenchError(unreachable(endpoint, exc.__class__.__name__))
    response = getattr(exc, "response", None)
    if isinstance(response, dict) and "Error" in response:
        err = response["Error"]
        return BenchError(f"{doing}{err.get('Code')}: {err.get('Message')}")
    return BenchError(f"{doing}{endpoint}: " + (str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__))
