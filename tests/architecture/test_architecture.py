"""The architecture, checked: import contracts (import-linter, from pyproject.toml), the node
boundary type-checked as one Protocol (mypy), file sizes, and a repository that explains itself."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_import_contracts_hold() -> None:
    """Layers (cli > faas > gpu_node > billing > the low layer), a runtime that imports nothing of
    the node, pure policies, and no import cycles anywhere in slfaas."""
    script = ("import sys; from importlinter.cli import lint_imports; "
              "sys.exit(lint_imports(config_filename='pyproject.toml', no_cache=True))")
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 broken" in out.stdout, out.stdout


def test_node_api_implementations_type_check() -> None:
    """``Node``, the control plane's ``FakeNode``, the ``NodeSet`` over several nodes and the node's
    stream satisfy ``NodeApi`` / ``NodeStream`` statically, and the NodeSet's handles (in-process,
    Ray) ``NodeHandle`` (a method missing or with another signature fails here)."""
    files = ["slfaas/gpu_node/api.py", "slfaas/gpu_node/node.py", "tests/faas/conftest.py",
             "slfaas/gpu_node/cluster/nodeset.py", "slfaas/gpu_node/cluster/handle.py",
             "slfaas/gpu_node/ray/client.py", "tests/architecture/nodeapi_conformance.py"]
    out = subprocess.run([sys.executable, "-m", "mypy", "--no-incremental", *files], cwd=ROOT,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_node_files_stay_small() -> None:
    """A file over 400 lines in the node is a service doing two jobs; the facade only wires."""
    sizes = {p: len(p.read_text().splitlines()) for p in (ROOT / "slfaas" / "gpu_node").rglob("*.py")}
    assert {str(p.relative_to(ROOT)): n for p, n in sizes.items() if n > 400} == {}
    assert sizes[ROOT / "slfaas" / "gpu_node" / "node.py"] < 200


def test_the_repository_explains_itself() -> None:
    """README and docs/ never point outside the repository, and name no issue numbers; the code
    names none either."""
    texts = {p: p.read_text(errors="replace") for p in [ROOT / "README.md", *(ROOT / "docs").rglob("*.md")]}
    assert [str(p) for p, t in texts.items() if "../shared" in t] == []
    issue = re.compile(r"\b(issue|Issue|ISSUE)s? ?#?\d+|\(#\d+\)")
    code = {p: p.read_text() for p in (ROOT / "slfaas").rglob("*.py")}
    assert [str(p) for p, t in {**texts, **code}.items() if issue.search(t)] == []
    assert (ROOT / "docs" / "ARCHITECTURE.md").is_file()
    assert "docs/ARCHITECTURE.md" in texts[ROOT / "README.md"]


def test_bench_scripts_use_the_installed_package() -> None:
    bench = {p: p.read_text() for p in (ROOT / "bench").glob("*.py")}
    assert [str(p) for p, t in bench.items() if "sys.path" in t] == []
