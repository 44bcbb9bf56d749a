"""An arena for the isolation attacks: a live server with function A (a secret in its
environment, a warm instance) and function B, whose handler is ``attacker.py``.

The suite's sandbox is the process sandbox (isolated), or Docker with
``SLFAAS_TEST_SANDBOX=docker`` (skipped, saying why, without an engine and image). A control
arena on an unisolated process sandbox (``--insecure-sandbox``) shows that every attack
works where nothing stops it, so a refusal in the isolated arena is the sandbox's doing.
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import signal
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.conftest import TEST_SANDBOX, LiveServer, TinyAssets, deploy
from tests.integration._util import instances_of, invoke

ATTACKER = (Path(__file__).parent / "attacker.py").read_text()
EVENT = {"prompt": "the treasure is over the sea", "max_tokens": 12, "temperature": 0}
READS = ["read_adapter", "read_log", "read_environ", "scan_environ", "read_registry", "read_memory",
         "list_sockets", "connect_a_socket"]
CHANGES = ["rewrite_registry", "plant_handler", "kill_a", "delete_a"]   # in this order: delete last


def backend_problem() -> str | None:
    """Why this suite's sandbox cannot run here (None: it can)."""
    if TEST_SANDBOX == "docker":
        try:
            from slfaas.gpu_node.sandboxes.docker_image import image_problem
            return image_problem(os.environ.get("SLFAAS_DOCKER_IMAGE", "slfaas/runtime:local"))
        except Exception as exc:  # no engine: DockerUnavailable and friends
            return str(exc)
    import sys

    from slfaas.gpu_node.sandboxes.isolation import HostIsolation, IsolationUnavailable
    try:
        HostIsolation.probe(sys.executable).close()
    except IsolationUnavailable as exc:
        return str(exc)
    return None


@dataclass
class Arena:
    server: LiveServer
    client: Any
    a_zip: bytes
    b_zip: bytes      # adapter B + the attacker's handler.py
    secret: str
    baseline: dict = field(default_factory=dict)
    a_config: dict = field(default_factory=dict)
    a_instance: dict = field(default_factory=dict)
    a_files: dict = field(default_factory=dict)

    @property
    def a_code_dir(self) -> Path:
        return self.server.data_dir / "code" / hashlib.sha256(self.a_zip).hexdigest()

    def targets(self) -> dict[str, Any]:
        """Exactly where A lives on the host."""
        (sock,) = glob.glob(f"/tmp/slfaas-rt-*/{self.a_instance['instance_id']}.sock")
        return {"a_name": "fn-a", "a_pid": self.a_instance["pid"], "a_code_dir": str(self.a_code_dir),
                "a_log": str(self.server.data_dir / "logs" / "fn-a.log"), "a_socket": sock,
                "registry": str(self.server.data_dir / "registry.db"), "secret": self.secret,
                "url": self.server.url}

    def attack(self, attacks: list[str]) -> dict[str, str]:
        resp, body = invoke(self.client, "fn-b", {"attacks": attacks, "targets": self.targets()})
        assert "FunctionError" not in resp, body
        return body

    def code_files(self) -> dict[str, str]:
        return {str(p.relative_to(self.a_code_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(self.a_code_dir.rglob("*")) if p.is_file()}

    def assert_a_unchanged(self) -> None:
        """A's records, files, instance and outputs are what they were before the attacks."""
        config = self.client.get_function_configuration(FunctionName="fn-a")
        for key in ("Description", "Environment", "CodeSha256", "RevisionId", "MemorySize"):
            assert config.get(key) == self.a_config.get(key), key
        assert self.code_files() == self.a_files
        (inst,) = instances_of(self.server, "fn-a")
        assert (inst["instance_id"], inst["pid"]) == (self.a_instance["instance_id"], self.a_instance["pid"])
        resp, body = invoke(self.client, "fn-a", EVENT)
        assert "FunctionError" not in resp, body
        assert body["metrics"]["cold_start"] is False        # the same instance, never killed
        assert (body["text"], body["usage"]) == (self.baseline["text"], self.baseline["usage"])


def build_arena(server: LiveServer, tiny_assets: TinyAssets) -> Arena:
    client = server.client()
    secret = f"a-secret-{uuid.uuid4().hex}"
    a_zip = tiny_assets.zip(tiny_assets.adapter_a)
    deploy(client, "fn-a", a_zip, Description="A's own", Environment={"Variables": {"A_SECRET": secret}})
    b_zip = tiny_assets.zip(tiny_assets.adapter_b, extra={"handler.py": ATTACKER})
    deploy(client, "fn-b", b_zip)
    arena = Arena(server, client, a_zip, b_zip, secret)
    resp, arena.baseline = invoke(client, "fn-a", EVENT)
    assert "FunctionError" not in resp, arena.baseline
    (arena.a_instance,) = instances_of(server, "fn-a")
    arena.a_config = client.get_function_configuration(FunctionName="fn-a")
    arena.a_files = arena.code_files()
    return arena


@pytest.fixture(scope="module")
def arena(tmp_path_factory: pytest.TempPathFactory, tiny_assets: TinyAssets) -> Iterator[Arena]:
    problem = backend_problem()
    if problem is not None:
        pytest.skip(f"the {TEST_SANDBOX} sandbox cannot run here: {problem}")
    server = LiveServer(tmp_path_factory.mktemp("arena"), "--keep-alive-s", "600").start()
    try:
        yield build_arena(server, tiny_assets)
    finally:
        if server.alive():
            server.stop()


@pytest.fixture(scope="module")
def control_arena(tmp_path_factory: pytest.TempPathFactory, tiny_assets: TinyAssets) -> Iterator[Arena]:
    if TEST_SANDBOX != "process":
        pytest.skip("the control arena is the unisolated process sandbox")
    server = LiveServer(tmp_path_factory.mktemp("control"), "--keep-alive-s", "600", "--insecure-sandbox").start()
    try:
        yield build_arena(server, tiny_assets)
    finally:
        if server.alive():
            server.stop()


def marked(marker: str) -> list[int]:
    """Live processes with ``marker`` as their last argument (the attacker's escaped grandchild)."""
    found = []
    for d in Path("/proc").iterdir():
        try:
            if d.name.isdigit() and (d / "cmdline").read_bytes().split(b"\0")[-2:-1] == [marker.encode()]:
                if (d / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                    found.append(int(d.name))
        except (OSError, IndexError):
            continue
    return found


def kill_marked(marker: str) -> None:
    for pid in marked(marker):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def log_of(server: LiveServer, name: str) -> str:
    got = server.api("GET", f"/slfaas/v1/functions/{name}/logs")
    return got if isinstance(got, str) else json.dumps(got)
