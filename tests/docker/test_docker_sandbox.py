"""The docker sandbox backend against a real engine, below the node agent: labels, host pid,
logs, exit statuses, stop/kill, the backbone hand-over, and reaping by label."""
from __future__ import annotations

import fcntl
import os
import socket
import sys
import textwrap
import time
from pathlib import Path

import pytest

from slfaas.gpu_node.sandboxes.base import SandboxSpec
from slfaas.gpu_node.sandboxes.docker import (LABEL_NODE_PID, LABEL_NODE_START, LABEL_PIDNS, LABEL_SESSION,
                                              DockerSandboxConfig, DockerSandboxFactory, _pidns)
from tests.docker.conftest import IMAGE, containers_of


@pytest.fixture
def factory(docker_client, tmp_path):  # type: ignore[no-untyped-def]
    f = DockerSandboxFactory(DockerSandboxConfig(image=IMAGE, owner=str(tmp_path)), client=None)
    yield f
    f.close()


@pytest.fixture
def runtime_socket(tmp_path):  # type: ignore[no-untyped-def]
    """A listening socket standing in for the node's Runtime API (the sandbox mounts it)."""
    path = tmp_path / "rt.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.listen(1)
    yield path
    sock.close()


def _spec(tmp_path: Path, socket_path: Path, script: str, *, env: dict[str, str] | None = None,
          fds: tuple[int, ...] = (), memory_mb: int = 256, name: str = "fn") -> SandboxSpec:
    code = tmp_path / f"code-{name}"
    code.mkdir(exist_ok=True)
    (code / "mine.txt").write_text("mine")
    iid = f"{name}-{os.urandom(4).hex()}"
    return SandboxSpec(
        instance_id=iid, function_name=name, version="$LATEST",
        argv=(sys.executable, "-c", textwrap.dedent(script)), env={"SLFAAS_DEVICE": "cpu", **(env or {})},
        code_dir=code, runtime_socket=socket_path, memory_mb=memory_mb, inherit_fds=fds,
        labels={"slfaas.node": "testnode", "slfaas.function": name, "slfaas.version": "$LATEST",
                "slfaas.instance": iid})


def _run(factory, spec, timeout_s: float = 60) -> tuple[int | None, list[str], object]:  # type: ignore[no-untyped-def]
    lines: list[str] = []
    sb = factory.start(spec, lines.append)
    code = sb.wait(timeout_s)
    return code, lines, sb


def test_labels_user_logs_and_exit_status(factory, docker_client, tmp_path, runtime_socket):  # type: ignore[no-untyped-def]
    spec = _spec(tmp_path, runtime_socket, """
        import os, sys, time
        print("hello from", os.getuid(), sorted(os.listdir("/var/task")), flush=True)
        print("runtime socket", os.path.exists(os.environ["SLFAAS_RUNTIME_SOCKET"]), flush=True)
        time.sleep(1.5)
        sys.exit(3)
    """)
    lines: list[str] = []
    sb = factory.start(spec, lines.append)
    # While it runs: one container, labelled with node, function, version, instance and owner.
    (c,) = containers_of(docker_client, instance=spec.instance_id)
    for key, value in spec.labels.items():
        assert c.labels[key] == value
    assert c.labels[LABEL_SESSION] == factory.session and c.labels[LABEL_NODE_PID] == str(os.getpid())
    host = c.attrs["HostConfig"]
    assert host["NetworkMode"] == "none" and host["ReadonlyRootfs"] is True
    assert host["Memory"] == 256 << 20 and host["CapDrop"] == ["ALL"]
    # The sandbox's pid is the runtime's host pid (not docker-init's), and it runs as the container user.
    with open(f"/proc/{sb.pid}/status") as fh:
        status = fh.read()
    assert "Uid:\t10001" in status
    with open(f"/proc/{sb.pid}/cmdline", "rb") as fh:
        assert fh.read().split(b"\0")[0] == sys.executable.encode()
    assert sb.wait(60) == 3
    assert "hello from 10001 ['mine.txt']" in lines
    assert "runtime socket True" in lines
    assert containers_of(docker_client, instance=spec.instance_id) == []  # removed once it ended


def test_signal_death_is_reported_like_a_process(factory, tmp_path, runtime_socket):  # type: ignore[no-untyped-def]
    code, _, _ = _run(factory, _spec(tmp_path, runtime_socket, """
        import os, signal
        os.kill(os.getpid(), signal.SIGSEGV)
    """))
    assert code == -11


def test_stop_and_kill(factory, docker_client, tmp_path, runtime_socket):  # type: ignore[no-untyped-def]
    script = "import time\nprint('up', flush=True)\ntime.sleep(600)\n"
    lines: list[str] = []
    sb = factory.start(_spec(tmp_path, runtime_socket, script, name="a"), lines.append)
    t0 = time.monotonic()
    while "up" not in lines and time.monotonic() - t0 < 30:
        time.sleep(0.05)
    t0 = time.monotonic()
    sb.stop(grace_s=1)
    assert time.monotonic() - t0 < 15
    assert sb.wait(1) == -15  # SIGTERM, forwarded by docker-init
    sb2 = factory.start(_spec(tmp_path, runtime_socket, script, name="b"), lambda _l: None)
    sb2.kill()
    assert sb2.wait(30) == -9
    assert containers_of(docker_client, session=factory.session) == []


def test_memory_limit_kills_only_that_container(factory, tmp_path, runtime_socket):  # type: ignore[no-untyped-def]
    code, lines, _ = _run(factory, _spec(tmp_path, runtime_socket, """
        blob = b"x" * (600 << 20)
        print("survived", flush=True)
    """, memory_mb=256))
    assert code == -9
    assert "survived" not in lines
    assert any("OOM-killed" in line for line in lines), lines


def test_backbone_is_handed_over_read_only(factory, tmp_path, runtime_socket):  # type: ignore[no-untyped-def]
    fd = os.memfd_create("slfaas-test", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.write(fd, b"backbone bytes" * 1000)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_WRITE | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK)
        code, lines, _ = _run(factory, _spec(tmp_path, runtime_socket, """
            import errno, mmap, os
            from slfaas.weights.image import open_image_path as open_backbone_path

            print("fd env", "SLFAAS_BACKBONE_FD" in os.environ, flush=True)
            fd = open_backbone_path(os.environ["SLFAAS_BACKBONE_PATH"])
            m = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
            print("read", bytes(m[:14]).decode(), len(m), os.readlink(f"/proc/self/fd/{fd}"), flush=True)

            def attempt(name, fn):
                try:
                    fn()
                    print(name, "ALLOWED", flush=True)
                except OSError as exc:
                    print(name, "denied", errno.errorcode[exc.errno], flush=True)

            attempt("write", lambda: os.pwrite(fd, b"X", 0))
            attempt("reopen-write", lambda: os.pwrite(os.open(f"/proc/self/fd/{fd}", os.O_RDWR), b"X", 0))
            attempt("mmap-write", lambda: mmap.mmap(fd, 0, access=mmap.ACCESS_WRITE))
            attempt("second-handout", lambda: open_backbone_path(os.environ["SLFAAS_BACKBONE_PATH"]))
        """, env={"SLFAAS_BACKBONE_FD": str(fd)}, fds=(fd,)))
        assert code == 0, lines
        assert "fd env False" in lines
        assert "read backbone bytes 14000 /memfd:slfaas-test (deleted)" in lines  # the node's pages
        assert not [line for line in lines if "ALLOWED" in line], lines
        assert {line.split()[0] for line in lines if " denied " in line} >= {"write", "reopen-write", "mmap-write"}
        assert os.pread(fd, 14, 0) == b"backbone bytes"
    finally:
        os.close(fd)


def test_orphans_of_dead_nodes_are_reaped_at_start(docker_client, tmp_path):  # type: ignore[no-untyped-def]
    def leftover(node_pid: str, start: str) -> object:
        return docker_client.containers.create(IMAGE, ["true"], labels={
            "slfaas.managed": "1", LABEL_SESSION: "old-" + os.urandom(3).hex(), LABEL_NODE_PID: node_pid,
            LABEL_NODE_START: start, LABEL_PIDNS: _pidns(), "slfaas.function": "ghost"}, network_mode="none")

    dead = leftover("999999999", "1")                   # its node process is gone
    reused = leftover(str(os.getpid()), "1")            # the pid lives, but it is another process
    with open(f"/proc/{os.getpid()}/stat") as fh:
        my_start = fh.read().rsplit(")", 1)[1].split()[19]
    alive = leftover(str(os.getpid()), my_start)        # a live node's container: not ours to reap
    try:
        f = DockerSandboxFactory(DockerSandboxConfig(image=IMAGE, owner=str(tmp_path)))
        f.close()
        ids = {c.id for c in docker_client.containers.list(all=True, filters={"label": "slfaas.function=ghost"})}
        assert dead.id not in ids and reused.id not in ids  # type: ignore[attr-defined]
        assert alive.id in ids  # type: ignore[attr-defined]
    finally:
        for c in (dead, reused, alive):
            try:
                c.remove(force=True)  # type: ignore[attr-defined]
            except Exception:
                pass
