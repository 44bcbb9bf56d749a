"""The node's own Python installation, as a sandbox sees it (mounted read-only at its own path)."""
from __future__ import annotations

import sys
from pathlib import Path


def host_python_paths() -> tuple[list[Path], Path]:
    """(directories to mount read-only at their own paths, directory to put on PYTHONPATH)
    for running the node's own Python installation and slfaas inside a sandbox."""
    import slfaas

    package = Path(slfaas.__file__).resolve().parent
    roots: list[Path] = []
    for p in sorted({Path(sys.base_prefix).resolve(), Path(sys.prefix).resolve()}):
        if not any(p.is_relative_to(r) for r in roots):
            roots.append(p)
    if not any(package.is_relative_to(r) for r in roots):
        roots.append(package)
    return roots, package.parent
