"""`slfaas server --sandbox docker` end to end, through boto3: what a function can and cannot
do inside its container, crashes and memory-limit kills as function errors, warm reuse, and no
container left behind after a stop or after kill -9 followed by a restart."""
from __future__ import annotations

import hashlib
import signal
from urllib.parse import urlparse

import pytest

from tests.conftest import deploy
from tests.docker.conftest import containers_of
from tests.integration._util import CRASHER_HANDLER, assert_healthy, instances_of, invoke, node, pid_alive, wait_for

pytestmark = pytest.mark.slow

EVENT = {"prompt": "hello there", "max_tokens": 6, "temperature": 0}

# Reports what the instance can reach; every probe answers "allowed" or the errno it got.
PROBE_HANDLER = '''
import errno, mmap, os, socket


def _try(fn):
    try:
        fn()
        return "allowed"
    except OSError as exc:
        return errno.errorcode.get(exc.errno, str(exc))


def _backbone_fd():
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}").startswith("/memfd:slfaas-"):
                return int(name)
        except OSError:
            pass


def handler(event, context):
    if "prompt" in event:
        return context.generate_event(event)
    fd = _backbone_fd()
    return {
        "pid": os.getpid(),
        "uid": os.getuid(),
        "interfaces": [name for _, name in socket.if_nameindex()],
        "connect_node_api": _try(lambda: socket.create_connection(("127.0.0.1", event["api_port"]), timeout=2)),
        "connect_outside": _try(lambda: socket.create_connection(("1.1.1.1", 53), timeout=2)),
        "backbone_held": fd is not None,
        "backbone_write": _try(lambda: os.pwrite(fd, b"x", 0)),
        "backbone_reopen_write": _try(lambda: os.pwrite(os.open(f"/proc/self/fd/{fd}", os.O_RDWR), b"x", 0)),
        "backbone_mmap_write": _try(lambda: mmap.mmap(fd, 0, access=mmap.ACCESS_WRITE)),
        "other_code_dir": _try(lambda: os.listdir(event["other_dir"])),
        "other_adapter": _try(lambda: open(event["other_dir"] + "/adapter_model.safetensors", "rb").read(1)),
        "data_dir": _try(lambda: os.listdir(event["data_dir"])),
        "own_files": sorted(os.listdir(os.environ["SLFAAS_CODE_DIR"])),
        "write_rootfs": _try(lambda: open("/etc/probe", "w")),
        "write_code": _try(lambda: open(os.environ["SLFAAS_CODE_DIR"] + "/adapter_config.json", "r+")),
        "create_in_code": _try(lambda: open(os.environ["SLFAAS_CODE_DIR"] + "/probe", "w")),
        "write_tmp": _try(lambda: open("/tmp/probe", "w").write("ok")),
        "docker_socket": any(os.path.exists(p) for p in ("/var/run/docker.sock", "/run/docker.sock")),
    }
'''

HOG_HANDLER = '''
def handler(event, context):
    blob = b"x" * (event.get("alloc_mb", 0) << 20)
    return {"allocated_mb": len(blob) >> 20}
'''


@pytest.fixture(scope="module")
def client(docker_server):  # type: ignore[no-untyped-def]
    return docker_server.client()


@pytest.fixture(scope="module")
def functions(tiny_assets, client):  # type: ignore[no-untyped-def]
    zips = {"probe": tiny_assets.zip(tiny_assets.adapter_a, extra={"handler.py": PROBE_HANDLER}),
            "other": tiny_assets.zip(tiny_assets.adapter_b),
            "crasher": tiny_assets.zip(tiny_assets.adapter_a, extra={"handler.py": CRASHER_HANDLER})}
    for name, z in zips.items():
        deploy(client, name, z)
    deploy(client, "hog", tiny_assets.zip(tiny_assets.adapter_b, extra={"handler.py": HOG_HANDLER}), MemorySize=1024)
    return zips


def test_inside_a_container_the_denials_hold(docker_server, functions, client, docker_client):  # type: ignore[no-untyped-def]
    other_dir = docker_server.data_dir / "code" / hashlib.sha256(functions["other"]).hexdigest()
    assert (other_dir / "adapter_model.safetensors").is_file()  # it exists on the node: the denial is real
    resp, out = invoke(client, "other", EVENT)  # the other function has a live container too
    assert "FunctionError" not in resp, out
    event = {"api_port": urlparse(docker_server.url).port, "other_dir": str(other_dir),
             "data_dir": str(docker_server.data_dir)}
    resp, p = invoke(client, "probe", event)
    assert "FunctionError" not in resp, p
    assert p["uid"] != 0
    assert p["interfaces"] == ["lo"]
    assert p["connect_node_api"] != "allowed" and p["connect_outside"] != "allowed"
    assert p["backbone_held"] is True
    assert p["backbone_write"] == "EBADF"              # a read-only descriptor ...
    assert p["backbone_reopen_write"] == "EPERM"       # ... of a memfd sealed against writes
    assert p["backbone_mmap_write"] in ("EACCES", "EPERM")
    assert p["other_code_dir"] == "ENOENT" and p["other_adapter"] == "ENOENT" and p["data_dir"] == "ENOENT"
    assert "handler.py" in p["own_files"] and "adapter_model.safetensors" in p["own_files"]
    assert p["write_rootfs"] == "EROFS" and p["write_code"] in ("EROFS", "EACCES")
    assert p["create_in_code"] == "EROFS"  # the code dir is a read-only mount
    assert p["write_tmp"] == "allowed"
    assert p["docker_socket"] is False
    # The instance's container: no network, read-only root, memory limit = MemorySize, non-root.
    (inst,) = instances_of(docker_server, "probe")
    (c,) = containers_of(docker_client, instance=inst["instance_id"])
    assert c.labels["slfaas.function"] == "probe" and c.labels["slfaas.version"] == "$LATEST"
    assert c.labels["slfaas.node"] == node(docker_server)["NodeId"]
    host = c.attrs["HostConfig"]
    assert host["NetworkMode"] == "none" and host["ReadonlyRootfs"] is True
    assert host["Memory"] == 2048 << 20 and host["CapDrop"] == ["ALL"]
    assert c.attrs["Config"]["User"] == "10001:10001"
    assert inst["pid"] == p["pid"] or pid_alive(inst["pid"])
    # Warm start: the next invocation reuses the same container.
    resp, again = invoke(client, "probe", event)
    assert again["pid"] == p["pid"]
    assert [i["instance_id"] for i in instances_of(docker_server, "probe")] == [inst["instance_id"]]


def test_crash_is_a_function_error_and_others_keep_serving(docker_server, functions, client):  # type: ignore[no-untyped-def]
    resp, body = invoke(client, "crasher", EVENT)
    assert "FunctionError" not in resp, body
    resp, body = invoke(client, "crasher", {"write_backbone": True})
    assert resp["FunctionError"] == "Unhandled"
    assert body["errorType"] == "Runtime.ExitError" and "SIGSEGV" in body["errorMessage"], body
    resp, body = invoke(client, "other", EVENT)
    assert "FunctionError" not in resp, body
    resp, body = invoke(client, "crasher", EVENT)  # a fresh container
    assert "FunctionError" not in resp and body["metrics"]["cold_start"] is True, body
    assert_healthy(docker_server)


def test_memory_limit_kill_is_a_function_error(docker_server, functions, client, docker_client):  # type: ignore[no-untyped-def]
    resp, body = invoke(client, "hog", {"alloc_mb": 8})
    assert "FunctionError" not in resp and body == {"allocated_mb": 8}, body
    (inst,) = instances_of(docker_server, "hog")
    (c,) = containers_of(docker_client, instance=inst["instance_id"])
    assert c.attrs["HostConfig"]["Memory"] == 1024 << 20
    resp, body = invoke(client, "hog", {"alloc_mb": 2048})
    assert resp["FunctionError"] == "Unhandled"
    assert body["errorType"] == "Runtime.ExitError" and "SIGKILL" in body["errorMessage"], body
    logs = docker_server.api("GET", "/slfaas/v1/functions/hog/logs")
    assert "OOM-killed" in logs
    resp, body = invoke(client, "other", EVENT)
    assert "FunctionError" not in resp, body
    resp, body = invoke(client, "hog", {"alloc_mb": 8})
    assert "FunctionError" not in resp and body == {"allocated_mb": 8}, body
    assert_healthy(docker_server)


def _session_of(docker_client, server) -> str:  # type: ignore[no-untyped-def]
    ids = {i["instance_id"] for i in node(server)["Instances"]}
    sessions = {c.labels["slfaas.session"] for c in containers_of(docker_client) if c.labels.get("slfaas.instance") in ids}
    assert len(sessions) == 1, sessions
    return sessions.pop()


def test_no_container_left_after_stop(docker_client, live_server_factory, tiny_assets, tmp_path):  # type: ignore[no-untyped-def]
    server = live_server_factory("--sandbox", "docker", data_dir=tmp_path / "stop")
    c = server.client()
    deploy(c, "left", tiny_assets.zip(tiny_assets.adapter_a))
    assert "FunctionError" not in invoke(c, "left", EVENT)[0]
    session = _session_of(docker_client, server)
    assert len(containers_of(docker_client, session=session)) == 1
    assert server.stop(signal.SIGTERM) == 0
    assert containers_of(docker_client, session=session) == []


def test_kill9_then_restart_leaves_no_container(docker_client, live_server_factory, tiny_assets, tmp_path):  # type: ignore[no-untyped-def]
    data_dir = tmp_path / "crash"
    server = live_server_factory("--sandbox", "docker", data_dir=data_dir)
    c = server.client()
    deploy(c, "orphan", tiny_assets.zip(tiny_assets.adapter_a))
    assert "FunctionError" not in invoke(c, "orphan", EVENT)[0]
    session = _session_of(docker_client, server)
    server.stop(signal.SIGKILL)
    assert len(containers_of(docker_client, session=session)) == 1  # the node died without cleaning up
    restarted = live_server_factory("--sandbox", "docker", data_dir=data_dir)
    wait_for(lambda: containers_of(docker_client, session=session) == [], 10, "the orphan to be reaped")
    resp, body = invoke(restarted.client(), "orphan", EVENT)
    assert "FunctionError" not in resp and body["metrics"]["cold_start"] is True, body
