"""Base models: registered by name (``slfaas models add``) or named by a local directory, each
checked to be a model directory the node can load before a function may use it."""
from __future__ import annotations

from pathlib import Path

from slfaas.errors import InvalidParameter, NotFound
from slfaas.faas.adapter_check import check_model_ref
from slfaas.faas.code import validate_base_model_dir
from slfaas.faas.registry import Registry


def resolve_base_model(registry: Registry, ref: str) -> Path:
    """A registered model name or a local model directory."""
    check_model_ref(ref, "The base model reference")
    try:
        path = Path(registry.get_base_model(ref).path)
    except NotFound:
        path = Path(ref).expanduser()
        try:
            is_dir = path.is_dir()
        except (OSError, ValueError):  # e.g. a name too long for the file system
            is_dir = False
        if not is_dir:
            raise InvalidParameter(
                f"Base model '{ref[:200]}' is neither a registered model (slfaas models add NAME PATH) "
                f"nor a local model directory")
    validate_base_model_dir(path)
    return path.resolve()


def add_base_model(registry: Registry, name: str, path: str) -> dict:
    if not name or "/" in name and Path(name).is_dir():
        raise InvalidParameter("A model name must not be empty or an existing path")
    if len(name) > 256:
        raise InvalidParameter("A model name must be at most 256 characters")
    try:
        p = Path(path).expanduser().resolve()
    except (ValueError, OSError, RuntimeError) as exc:  # e.g. an embedded NUL, a symlink loop
        raise InvalidParameter(f"{path!r} is not a valid path: {exc}")
    if not p.is_dir():
        raise InvalidParameter(f"{path} is not a directory")
    validate_base_model_dir(p)
    entry = registry.put_base_model(name, str(p))
    return {"Name": entry.name, "Path": entry.path}
