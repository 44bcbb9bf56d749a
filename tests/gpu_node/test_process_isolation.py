"""The isolated process sandbox with real sandboxes (bubblewrap, setpriv, cgroups): what one
sees and can do, how it ends, how its memory is bounded, and how uids are handed out."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Iterator

import pytest

from slfaas.gpu_node.sandboxes.isolation import HostIsolation, IsolationUnavailable, Jail
from slfaas.gpu_node.sandboxes.memlimit import RlimitMemory, memory_control
from slfaas.gpu_node.sandboxes.process import ProcessSandbox, ProcessSandboxFactory
from slfaas.gpu_node.sandboxes.uids import UidAllocator, sweep
from tests.gpu_node.fakes import wait_until


@pytest.fixture(scope="module")
def isolation() -> Iterator[HostIsolation]:
    try:
        host = HostIsolation.probe(sys.executable)
    except IsolationUnavailable as exc:
        pytest.skip(f"this host cannot isolate process sandboxes: {exc}")
    yield host
    host.close()


@pytest.fixture
def factory(isolation: HostIsolation) -> Iterator[ProcessSandboxFactory]:
    f = ProcessSandboxFactory(isolation=isolation)
    yield f
    f._spawner.shutdown(wait=False)   # not close(): the module's isolation outlives it


class Lines(list):
    def __call__(self, line: str) -> None:
        self.append(line)


def _run(factory: ProcessSandboxFactory, jail: Jail, argv: list[str], env: dict[str, str], code_dir: Path,
         sock: Path, fds: tuple[int, ...] = ()) -> tuple[ProcessSandbox, Lines]:
    lines = Lines()
    cmd, sandbox_env = jail.instance(argv, env, code_dir, sock)
    return factory.spawn(cmd, sandbox_env, Path("/"), fds, lines, jail), lines


@pytest.fixture
def layout(tmp_path: Path) -> dict[str, Path]:
    """A node-side layout: a private data dir with a secret, a code dir, a model dir with
    weights, a Runtime API socket in a private directory."""
    data = tmp_path / "data"
    (data / "code" / "fn").mkdir(parents=True)
    (data / "registry.db").write_text("secret registry")
    (data / "code" / "fn" / "handler.py").write_text("x = 1\n")
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_text("weights")
    data.chmod(0o700)
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    return {"data": data, "code": data / "code" / "fn", "model": model, "sock": run / "i.sock"}


PROBE = textwrap.dedent('''
    import json, os, socket, sys
    def attempt(fn):
        try:
            r = fn()
            return "ok" if r is None else r
        except Exception as exc:
            return type(exc).__name__
    def connect(addr, family=socket.AF_UNIX):
        s = socket.socket(family, socket.SOCK_STREAM); s.settimeout(2); s.connect(addr); s.close()
    def write(path):
        with open(path, "w") as fh: fh.write("x")
    status = dict(l.split(":", 1) for l in open("/proc/self/status"))
    fd = int(os.environ["SLFAAS_BACKBONE_FD"])
    print(json.dumps({
        "uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups(),
        "cap_eff": status["CapEff"].strip(), "no_new_privs": status["NoNewPrivs"].strip(),
        "pids": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
        "cwd": os.getcwd(), "task": sorted(os.listdir("/var/task")), "model": sorted(os.listdir("/opt/slfaas/model")),
        "registry": attempt(lambda: open(sys.argv[1]).read()),
        "node_pid_environ": attempt(lambda: open(f"/proc/{sys.argv[3]}/environ").read()),
        "backbone": attempt(lambda: os.pread(fd, 8, 0).decode()),
        "runtime_socket": attempt(lambda: connect("/run/slfaas/runtime.sock")),
        "loopback": attempt(lambda: connect(("127.0.0.1", int(sys.argv[2])), socket.AF_INET)),
        "write_task": attempt(lambda: write("/var/task/handler.py")),
        "write_root": attempt(lambda: write("/evil")),
        "write_tmp": attempt(lambda: write("/tmp/mine")),
        "env": {k: os.environ.get(k) for k in ("HOME", "SLFAAS_CODE_DIR", "SLFAAS_BASE_MODEL_DIR",
                                               "SLFAAS_RUNTIME_SOCKET", "SLFAAS_NODE_PID", "MY_VAR")},
    }), flush=True)
''')


def test_a_sandbox_sees_only_its_own_files_and_runs_as_its_own_uid(factory, isolation, layout) -> None:  # type: ignore[no-untyped-def]
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(layout["sock"]))
    server.listen(4)
    tcp = socket.socket()
    tcp.bind(("127.0.0.1", 0))
    tcp.listen(4)
    fd = os.memfd_create("backbone", os.MFD_CLOEXEC)
    os.write(fd, b"BACKBONE")
    jail = isolation.jail("probe-view", 512)
    try:
        env = {"SLFAAS_BACKBONE_FD": str(fd), "SLFAAS_CODE_DIR": str(layout["code"]),
               "SLFAAS_BASE_MODEL_DIR": str(layout["model"]), "SLFAAS_RUNTIME_SOCKET": str(layout["sock"]),
               "SLFAAS_NODE_PID": str(os.getpid()), "MY_VAR": "mine", "PATH": os.environ["PATH"]}
        sandbox, lines = _run(factory, jail, [sys.executable, "-c", PROBE, str(layout["data"] / "registry.db"),
                                              str(tcp.getsockname()[1]), str(os.getpid())],
                              env, layout["code"], layout["sock"], (fd,))
        uid = jail.uid
        assert sandbox.wait(60) == 0, lines
    finally:
        os.close(fd)
        server.close()
        tcp.close()
    seen = json.loads(lines[-1])
    assert seen["uid"] == seen["gid"] == uid and 200_000 <= uid and seen["groups"] == []
    assert seen["cap_eff"] == "0000000000000000" and seen["no_new_privs"] == "1"
    assert seen["pids"] == [1, 2]          # bwrap's init and itself: no other process of the host
    assert seen["cwd"] == "/var/task" and seen["task"] == ["handler.py"]
    assert seen["model"] == ["config.json"]   # not the weights
    assert seen["registry"] == "FileNotFoundError" and seen["node_pid_environ"] == "FileNotFoundError"
    assert seen["backbone"] == "BACKBONE"      # the inherited descriptor
    assert seen["runtime_socket"] == "ok"
    assert seen["loopback"] in ("ConnectionRefusedError", "OSError")   # its own loopback, not the host's
    assert seen["write_task"] == "OSError" and seen["write_root"] in ("OSError", "PermissionError")
    assert seen["write_tmp"] == "ok"
    assert seen["env"] == {"HOME": "/tmp", "SLFAAS_CODE_DIR": "/var/task", "SLFAAS_BASE_MODEL_DIR": "/opt/slfaas/model",
                           "SLFAAS_RUNTIME_SOCKET": "/run/slfaas/runtime.sock", "SLFAAS_NODE_PID": None,
                           "MY_VAR": "mine"}
    st = os.stat(layout["sock"])
    assert (st.st_uid, st.st_mode & 0o777) == (uid, 0o600)   # connectable by its uid alone
    assert uid not in isolation.uids.held()   # released once the sandbox ended


GRANDCHILD = textwrap.dedent('''
    import os, sys, time
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(300)", sys.argv[1] + "-orphan"])
        os._exit(0)
    print("forked", flush=True)
    time.sleep(300)
''')


def _marked(marker: str) -> list[int]:
    """Processes that run with ``marker``-orphan in their command line (the grandchild)."""
    marker += "-orphan"
    found = []
    for d in Path("/proc").iterdir():
        try:
            if d.name.isdigit() and marker.encode() in (d / "cmdline").read_bytes():
                found.append(int(d.name))
        except OSError:
            continue
    return found


@pytest.mark.parametrize("end", ["kill", "stop", "runtime_killed"])
def test_every_process_of_a_sandbox_dies_with_it(factory, isolation, layout, end: str) -> None:  # type: ignore[no-untyped-def]
    marker = f"slfaas-test-orphan-{os.getpid()}-{end}"
    jail = isolation.jail(f"probe-{end}", 256)
    layout["sock"].touch()
    sandbox, lines = _run(factory, jail, [sys.executable, "-c", GRANDCHILD, marker], {"PATH": "/usr/bin"},
                          layout["code"], layout["sock"])
    assert wait_until(lambda: "forked" in lines and len(_marked(marker)) == 1, 30, 0.02), lines
    uid, box = jail.uid, jail.box
    runtime = sandbox.pid
    assert runtime is not None and int(Path(f"/proc/{runtime}/status").read_text().split("Uid:")[1].split()[0]) == uid
    if end == "kill":
        sandbox.kill()
    elif end == "stop":
        sandbox.stop(grace_s=5)
    else:
        os.kill(runtime, 9)
    code = sandbox.wait(30)
    assert code == (-15 if end == "stop" else -9)
    assert _marked(marker) == []          # the setsid() grandchild too
    assert sweep(uid, 0)                  # nothing runs as its uid any more
    assert uid not in isolation.uids.held()
    assert not getattr(box, "path", Path("/nonexistent")).exists()   # its cgroup is gone


HOG = "b = bytearray(256 << 20); print('allocated', flush=True)"


def test_memory_size_kills_a_sandbox_that_outgrows_it(factory, isolation, layout) -> None:  # type: ignore[no-untyped-def]
    if isinstance(isolation.memory, RlimitMemory):
        pytest.skip(f"no memory cgroup here: {isolation.memory.description}")
    layout["sock"].touch()
    jail = isolation.jail("probe-hog", 64)
    sandbox, lines = _run(factory, jail, [sys.executable, "-c", HOG], {"PATH": "/usr/bin"}, layout["code"],
                          layout["sock"])
    assert sandbox.wait(60) == -9
    assert "allocated" not in lines
    assert "instance exceeded its memory limit of 64 MB (MemorySize) and was OOM-killed" in lines


def test_rlimit_fallback_refuses_the_allocation(factory, isolation, layout) -> None:  # type: ignore[no-untyped-def]
    host = HostIsolation(isolation.tools, RlimitMemory("test"), isolation.uids, sys.executable)
    layout["sock"].touch()
    jail = host.jail("probe-rlimit", 64)
    sandbox, lines = _run(factory, jail, [sys.executable, "-c", HOG], {"PATH": "/usr/bin"}, layout["code"],
                          layout["sock"])
    assert sandbox.wait(60) == 1
    assert "allocated" not in lines and any("MemoryError" in line for line in lines), lines


def test_uids_are_unique_across_nodes_and_swept_on_release(tmp_path: Path) -> None:
    a = UidAllocator(first=300_000, count=4, lock_dir=tmp_path / "locks")
    b = UidAllocator(first=300_000, count=4, lock_dir=tmp_path / "locks")   # another node on the machine
    got = [a.allocate(), b.allocate(), a.allocate(), b.allocate()]
    assert sorted(got) == [300_000, 300_001, 300_002, 300_003]
    with pytest.raises(Exception, match="in use"):
        a.allocate()
    uid = got[0]
    proc = subprocess.Popen(["sleep", "300"], user=uid, group=uid, extra_groups=[])
    try:
        a.release(uid)                      # kills what still runs as it
        assert proc.wait(10) == -9
    finally:
        proc.kill()
    assert b.allocate() == uid              # free again, for any node
    c = UidAllocator(first=300_100, count=2, lock_dir=tmp_path / "locks")
    busy = subprocess.Popen(["sleep", "300"], user=c.first, group=c.first, extra_groups=[])
    try:
        assert c.allocate() == c.first + 1   # a uid with processes is never handed out
    finally:
        busy.kill()
        busy.wait()


def _tree(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


def test_memory_control_picks_the_cgroup_it_can_use(tmp_path: Path) -> None:
    """The file layouts of both cgroup versions, on a directory tree standing in for cgroupfs."""
    v1 = tmp_path / "v1"
    _tree(v1, {"node/path/cgroup.procs": ""})
    (tmp_path / "mountinfo1").write_text(f"35 31 0:32 / {v1} rw - cgroup cgroup rw,memory\n")
    (tmp_path / "cgroup1").write_text("4:memory:/node/path\n0::/\n")
    control = memory_control(tmp_path / "mountinfo1", tmp_path / "cgroup1")
    assert control.description.startswith("cgroup v1") and str(v1 / "node" / "path" / "slfaas-") in control.description
    box = control.box("fn-1", 128)
    path = box.path  # type: ignore[attr-defined]
    assert path.parent.parent == v1 / "node" / "path"
    assert (path / "memory.limit_in_bytes").read_text() == str(128 << 20)
    assert box.command_prefix()[-1] == str(path / "cgroup.procs")

    v2 = tmp_path / "v2"
    _tree(v2, {"cgroup.controllers": "cpu io memory pids", "cgroup.subtree_control": "cpu"})
    (tmp_path / "mountinfo2").write_text(f"41 31 0:38 / {v2} rw - cgroup2 cgroup2 rw\n")
    (tmp_path / "cgroup2").write_text("0::/user.slice/session.scope\n")
    control = memory_control(tmp_path / "mountinfo2", tmp_path / "cgroup2")
    assert control.description.startswith("cgroup v2")
    assert (v2 / "cgroup.subtree_control").read_text() == "+memory"
    box = control.box("fn-2", 256)
    path = box.path  # type: ignore[attr-defined]
    assert (path.parent / "cgroup.subtree_control").read_text() == "+memory"
    assert (path / "memory.max").read_text() == str(256 << 20)
    (path / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    assert box.oom_kills() == 1

    _tree(tmp_path / "v2-nomem", {"cgroup.controllers": "cpu io"})
    (tmp_path / "mountinfo3").write_text(f"41 31 0:38 / {tmp_path / 'v2-nomem'} rw - cgroup2 cgroup2 rw\n")
    control = memory_control(tmp_path / "mountinfo3", tmp_path / "cgroup2")
    assert isinstance(control, RlimitMemory) and "memory controller not available" in control.description


def test_the_server_refuses_an_unisolated_process_sandbox_unless_told(tmp_path: Path) -> None:
    env = {**os.environ, "SLFAAS_BWRAP": str(tmp_path / "no-bwrap")}
    out = subprocess.run([sys.executable, "-m", "slfaas.cli.main", "server", "--port", "0", "--data-dir",
                          str(tmp_path / "d")], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode != 0
    (line,) = [ln for ln in out.stderr.splitlines() if "isolate" in ln]
    assert "cannot isolate functions here" in line and "no-bwrap is not an executable file" in line
    assert "--insecure-sandbox" in line and "Traceback" not in out.stderr


def _uid_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/status").read_text().split("Uid:")[1].split()[0])


def test_a_warm_pool_runtime_is_sandboxed_before_and_after_it_becomes_an_instance(tiny_assets, tmp_path,  # type: ignore[no-untyped-def]
                                                                                   caplog) -> None:
    from slfaas.gpu_node.builder import attach_warm_pool
    from slfaas.gpu_node.config import NodeConfig
    from slfaas.gpu_node.node import Node
    from tests.gpu_node.fakes import make_request, make_spec

    try:
        host = HostIsolation.probe(sys.executable)
    except IsolationUnavailable as exc:
        pytest.skip(f"this host cannot isolate process sandboxes: {exc}")
    caplog.set_level("INFO", logger="slfaas.gpu_node.sandboxes.warm_pool")
    factory = ProcessSandboxFactory(isolation=host)
    attach_warm_pool(factory, 1)
    agent = Node(NodeConfig(data_dir=tmp_path / "node", keep_alive_s=600), factory)
    try:
        assert wait_until(lambda: "ready" in caplog.text, 120, 0.1), "the pool runtime never became ready"
        (pool_uid,) = host.uids.held()    # the pool runtime holds a uid before any function exists
        code = shutil.copytree(tiny_assets.adapter_a, tmp_path / "code")
        for f in code.iterdir():   # as the code store extracts them: a sandbox's uid reads them
            f.chmod(0o644)
        spec = dataclasses.replace(make_spec(tiny_assets.base, code, name="pooled", timeout_s=120),
                                   memory_mb=1024)   # a runtime with torch imported holds ~0.4 GB
        result = agent.invoke(make_request(spec, {"prompt": "dear sir", "max_tokens": 4, "temperature": 0}))
        assert result.function_error is None, result.payload
        inst = agent.table.get(result.instance_id)
        assert inst is not None
        sandbox = inst.sandbox
        assert sandbox.preloaded is True and _uid_of(sandbox.pid) == pool_uid
        # its memory bound became the function's MemorySize
        box = sandbox.jail.box
        if hasattr(box, "path"):
            assert (box.path / "memory.limit_in_bytes").read_text().strip() == str(spec.memory_mb << 20)
        assert "warm-pool runtime specialised for pooled" in agent.logs("pooled").text
        assert wait_until(lambda: len(host.uids.held()) == 2, 60, 0.1)   # the refill: another uid
        uids = host.uids.held()
        node_cgroup = getattr(host.memory, "dir", None)
    finally:
        agent.shutdown()
    assert all(sweep(u, 0) for u in uids) and not host.uids.held()
    assert node_cgroup is None or not node_cgroup.exists()
