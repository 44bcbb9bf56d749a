"""Docker tests run against a real engine. They may skip only off CI, when no engine can be
started here (docker/ensure-engine.sh starts an installed dockerd as root, and in CI installs
one and builds the runtime image); in CI (CI=true) a missing engine is a failure."""
from __future__ import annotations

import os
import subprocess
import sys
from typing import Any, Iterator

import pytest

from tests.conftest import ROOT, LiveServer

IMAGE = os.environ.get("SLFAAS_DOCKER_IMAGE", "slfaas/runtime:local")


def _ready() -> str | None:
    """None when an engine answers and the runtime image is current, else why not."""
    try:
        from slfaas.gpu_node.sandboxes.docker_image import image_problem
        return image_problem(IMAGE)
    except Exception as exc:  # DockerUnavailable and friends
        return str(exc)


@pytest.fixture(scope="session")
def docker_client() -> Iterator[Any]:
    problem = _ready()
    if problem is not None:
        setup = subprocess.run(["bash", str(ROOT / "docker" / "ensure-engine.sh")], capture_output=True, text=True,
                               env={**os.environ, "PYTHON": sys.executable}, timeout=900)
        problem = _ready()
        if problem is not None:
            why = f"{problem}; docker/ensure-engine.sh said: {setup.stderr.strip()[-600:]}"
            if os.environ.get("CI") == "true":
                pytest.fail(f"CI needs a Docker engine and the runtime image: {why}")
            pytest.skip(f"Docker tests skipped: no Docker engine could be started here ({why})")
    from slfaas.gpu_node.sandboxes.docker import connect
    client = connect()
    yield client
    client.close()


def containers_of(client: Any, **labels: str) -> list[Any]:
    """Containers (running or not) carrying all of these slfaas labels. Listed, then looked
    up one by one: one removed in between (another test run's, on the same engine) is gone,
    not an error, where the SDK's ``containers.list`` would raise NotFound."""
    import docker.errors

    filters = [f"slfaas.{k}={v}" for k, v in labels.items()] or ["slfaas.managed"]
    found = []
    for listed in client.api.containers(all=True, filters={"label": filters}):
        try:
            found.append(client.containers.get(listed["Id"]))
        except docker.errors.NotFound:
            pass
    return found


@pytest.fixture(scope="module")
def docker_server(docker_client, tmp_path_factory) -> Iterator[LiveServer]:  # type: ignore[no-untyped-def]
    s = LiveServer(tmp_path_factory.mktemp("docker-server"), "--sandbox", "docker", "--keep-alive-s", "600").start()
    yield s
    if s.alive():
        s.stop()
