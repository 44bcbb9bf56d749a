"""Policies stay pure: nothing in slfaas.gpu_node.policy imports a device, thread, clock, OS or
network module, so their decisions depend on the snapshot and clock value passed in alone."""
from __future__ import annotations

import ast
from pathlib import Path

import slfaas.gpu_node.policy as policy_pkg

ALLOWED = {"__future__", "dataclasses", "typing", "math", "collections", "slfaas.gpu_node.policy"}
FORBIDDEN = {"torch", "threading", "time", "socket", "os", "subprocess", "asyncio", "multiprocessing",
             "random", "datetime", "io", "pathlib", "shutil", "signal", "sys", "concurrent"}


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:   # relative: inside the package
                found.add("slfaas.gpu_node.policy")
            elif node.module:
                found.add(node.module)
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) in {"__import__", "open", "exec", "eval"}:
            found.add(f"<call {node.func.id}>")   # type: ignore[attr-defined]
    return found


def test_policies_import_only_pure_modules() -> None:
    files = sorted(Path(policy_pkg.__file__).parent.rglob("*.py"))
    assert len(files) >= 3   # __init__, preload, keepalive at least
    for path in files:
        imports = _imports(path)
        top = {name.split(".")[0] for name in imports}
        assert not top & FORBIDDEN, f"{path.name} imports {sorted(top & FORBIDDEN)}"
        outside = {name for name in imports
                   if name not in ALLOWED and not name.startswith("slfaas.gpu_node.policy.")}
        assert not outside, f"{path.name} imports {sorted(outside)}"


def test_the_check_sees_forbidden_imports(tmp_path: Path) -> None:
    sample = tmp_path / "bad.py"
    sample.write_text("import os.path\nfrom time import monotonic\nx = __import__('socket')\n")
    assert {"os.path", "time", "<call __import__>"} <= _imports(sample)
