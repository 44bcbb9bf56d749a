"""CUDA VMM memory shared by a descriptor: another uid maps it read-only; its writes are refused
by the GPU and kill only that process. Skipped without a GPU."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (run on the GPU machine)")]

READER = """
import os, sys, torch
from slfaas.weights.cuda_vmm import open_vmm_backbone
state, keep = open_vmm_backbone(int(sys.argv[1]), int(sys.argv[2]), "cuda:0")
t = state["w"]
print("uid", os.getuid(), "sum", float(t.double().sum()), flush=True)
if sys.argv[3] == "write":
    t.add_(1.0)
    torch.cuda.synchronize()
    print("WROTE", flush=True)
"""


@pytest.fixture
def arena():  # type: ignore[no-untyped-def]
    from slfaas.weights import cuda_vmm

    torch.zeros(1, device="cuda:0")
    mapping = cuda_vmm.create(4 << 20, 0)
    t = mapping.tensor()
    w = t[: 1024 * 4].view(torch.float32)
    w.copy_(torch.arange(1024, dtype=torch.float32, device="cuda:0"))
    table = cuda_vmm.table_fd(mapping.size_bytes, [("w", "F32", [1024], 0, 4096)])
    yield mapping, w, table
    torch.cuda.synchronize()
    os.close(table)
    mapping.close()


@pytest.fixture(scope="module")
def readable_package():  # type: ignore[no-untyped-def]
    """slfaas.weights where another uid can import it (a checkout under /root is not readable)."""
    import tempfile
    from pathlib import Path

    import slfaas

    root = Path(tempfile.mkdtemp(prefix="slfaas-vmm-"))
    src = Path(slfaas.__file__).parent
    shutil.copytree(src / "weights", root / "slfaas" / "weights", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(src / "__init__.py", root / "slfaas" / "__init__.py")
    for path in [root, *root.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def _child(mapping, table: int, mode: str, package) -> subprocess.CompletedProcess:  # type: ignore[no-untyped-def]
    fd = mapping.export_fd()
    try:
        setpriv = shutil.which("setpriv")
        drop = [setpriv, "--reuid", "65534", "--regid", "65534", "--clear-groups"] if setpriv and os.getuid() == 0 else []
        env = {**os.environ, "PYTHONPATH": str(package), "HOME": "/tmp"}
        return subprocess.run([*drop, sys.executable, "-c", READER, str(fd), str(table), mode], pass_fds=(fd, table),
                              capture_output=True, text=True, timeout=120, env=env)
    finally:
        os.close(fd)


def test_another_uid_reads_the_arena_through_its_descriptor(arena, readable_package) -> None:  # type: ignore[no-untyped-def]
    mapping, w, table = arena
    out = _child(mapping, table, "read", readable_package)
    assert out.returncode == 0, out.stderr
    assert f"sum {float(sum(range(1024)))}" in out.stdout
    if os.getuid() == 0:
        assert "uid 65534" in out.stdout


def test_a_write_through_the_read_only_mapping_kills_only_the_writer(arena, readable_package) -> None:  # type: ignore[no-untyped-def]
    mapping, w, table = arena
    before = w.clone()
    out = _child(mapping, table, "write", readable_package)
    assert out.returncode != 0 and "WROTE" not in out.stdout, (out.stdout, out.stderr)
    assert torch.equal(w, before)                       # the owner's bytes are unchanged
    w.add_(0.0)                                         # and the owner still writes
    torch.cuda.synchronize()
