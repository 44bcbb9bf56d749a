"""`slfaas node build-image --from-host` against a real engine: the image is made from this
host's files, passes --check, holds no host secrets, and a docker sandbox of it runs the node's
Python (torch included). The test image is removed afterwards."""
from __future__ import annotations

import os
import socket
import sys
import textwrap
from pathlib import Path
from typing import Any, Iterator

import pytest
from click.testing import CliRunner

from slfaas.cli.main import cli
from slfaas.gpu_node.sandboxes.base import SandboxSpec
from slfaas.gpu_node.sandboxes.docker import DockerSandboxConfig, DockerSandboxFactory
from slfaas.gpu_node.sandboxes.docker_image import ImageBuildError, host_recipe_label, image_problem
from slfaas.gpu_node.sandboxes.host_image import host_tar_stream, import_host_image
from tests.docker.conftest import IMAGE


@pytest.fixture(scope="module")
def built(docker_client: Any) -> Iterator[tuple[str, str]]:
    """(tag, what the build printed) of a from-host image made through the CLI."""
    tag = f"slfaas/test-from-host:{os.urandom(4).hex()}"
    result = CliRunner().invoke(cli, ["node", "build-image", "--from-host", "--tag", tag, "--exclude", "usr/bin/yes"],
                                prog_name="slfaas")
    try:
        assert result.exit_code == 0, result.output
        assert result.stdout.strip() == tag
        yield tag, result.stderr
    finally:
        for image in docker_client.images.list(name=tag.split(":")[0]):
            docker_client.images.remove(image.id, force=True)


@pytest.fixture
def host_image(built: tuple[str, str]) -> str:
    return built[0]


def test_the_build_says_its_phases_and_checks_that_the_image_runs(built: tuple[str, str]) -> None:
    _, out = built
    for phase in ("[1/4]", "[2/4]", "[3/4]", "[4/4]", "/etc:", "/usr/lib:"):
        assert phase in out, out
    assert "python 3." in out and " ok" in out


def test_the_image_is_labelled_and_passes_check(host_image: str, docker_client: Any) -> None:
    labels = docker_client.images.get(host_image).labels
    assert labels == {"slfaas.python": "host", "slfaas.recipe": host_recipe_label()}
    assert image_problem(host_image) is None and image_problem(host_image, from_host=True) is None
    assert "another recipe" in (image_problem(host_image, from_host=False) or "")
    result = CliRunner().invoke(cli, ["node", "build-image", "--check", "--from-host", "--tag", host_image])
    assert result.exit_code == 0 and "is ready" in result.stdout
    # the debootstrap image is not a from-host one
    result = CliRunner().invoke(cli, ["node", "build-image", "--check", "--from-host", "--tag", IMAGE])
    assert result.exit_code == 1 and "another recipe" in result.stderr


def test_a_sandbox_of_it_runs_the_nodes_python_with_torch_and_sees_no_secrets(host_image: str,
                                                                               tmp_path: Path) -> None:
    sock_path = tmp_path / "rt.sock"  # stands in for the node's Runtime API socket (mounted in)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(sock_path))
    listener.listen(1)
    code = tmp_path / "code"
    code.mkdir()
    script = textwrap.dedent("""
        import glob, os, torch
        print("torch", torch.__version__, float(torch.ones(4).sum()), "uid", os.getuid(), flush=True)
        secrets = ["/etc/shadow", "/etc/gshadow", "/etc/ssl/private", "/etc/docker", "/etc/machine-id"]
        print("secrets", [p for p in secrets + glob.glob("/etc/ssh/*key*") if os.path.lexists(p)], flush=True)
        print("excluded", os.path.exists("/usr/bin/yes"), "kept", os.path.exists("/usr/bin/true"), flush=True)
        print("user", open("/etc/passwd").read().splitlines()[-1], flush=True)
    """)
    spec = SandboxSpec(instance_id=f"fromhost-{os.urandom(4).hex()}", function_name="fromhost", version="$LATEST",
                       argv=(sys.executable, "-c", script), env={"SLFAAS_DEVICE": "cpu"}, code_dir=code,
                       runtime_socket=sock_path, memory_mb=1024, labels={"slfaas.function": "fromhost"})
    factory = DockerSandboxFactory(DockerSandboxConfig(image=host_image, owner=str(tmp_path)), client=None)
    try:
        lines: list[str] = []
        sandbox = factory.start(spec, lines.append)
        assert sandbox.wait(180) == 0, lines
    finally:
        factory.close()
        listener.close()
    torch_line = next(ln for ln in lines if ln.startswith("torch "))
    assert torch_line.endswith("4.0 uid 10001"), lines
    assert "secrets []" in lines and "excluded False kept True" in lines
    assert "user slfaas:x:10001:10001:slfaas function:/tmp:/usr/sbin/nologin" in lines


def test_a_stream_that_fails_midway_leaves_no_image(docker_client: Any) -> None:
    tag = f"slfaas/test-from-host-broken:{os.urandom(4).hex()}"

    def cut_off() -> Iterator[bytes]:
        sent = 0
        for chunk in host_tar_stream(progress=lambda _: None):
            yield chunk
            sent += len(chunk)
            if sent > 20 << 20:
                raise OSError("the disk went away")

    with pytest.raises(ImageBuildError, match="docker import of the host's files failed: the disk went away"):
        import_host_image(docker_client, cut_off(), tag)
    assert docker_client.images.list(name=tag.split(":")[0]) == []
