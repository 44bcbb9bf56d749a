"""Docker sandboxes: each function instance in its own container, borrowing the node's backbone.

The container runs the same runtime as the process backend (``python -m slfaas.functions``);
only what it can see changes:

- network ``none``: loopback only. The node is reached through the instance's Runtime API
  Unix socket, bind-mounted at ``/run/slfaas/runtime.sock``.
- read-only root filesystem, a private tmpfs ``/tmp``; a non-root user; all capabilities
  dropped, ``no-new-privileges``; no Docker socket; memory limited to the function's
  MemorySize (no swap), so an instance that outgrows it is OOM-killed alone.
- mounted read-only: the function's own code dir (``/var/task``), the base model's config and
  tokenizer (``/opt/slfaas/model``) and, in "host Python" images, the node's own Python
  installation at its own path (glibc matches: the image is the host's Debian release).
- the backbone is never copied: a sealed memfd lives on no mounted filesystem, so it cannot
  be bind-mounted; instead the node serves each container a Unix socket on which it hands
  over a read-only descriptor of the memfd (SCM_RIGHTS). Writes stay impossible (seals).
  On CUDA the IPC handle file is mounted and the GPU is requested (see ``_cuda_options``).

Every container carries labels (node, function, version, instance, and the owning node
process) so that leftovers of a crashed node are reaped at the next start, and everything
of this node at stop. A warm pool of pre-started generic containers is in ``docker_pool``.
"""
from __future__ import annotations

import logging
import os
import shutil
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from slfaas.errors import NodeError
from slfaas.gpu_node.sandboxes.base import LogSink, Sandbox, SandboxFactory, SandboxSpec
from slfaas.gpu_node.sandboxes.loglines import capped_lines
from slfaas.gpu_node.sandboxes.warm_pool import make_work_dir
from slfaas.gpu_node.sandboxes.warm_pool import proc_start_ticks as _proc_start_ticks  # labels name the node process

log = logging.getLogger(__name__)

DEFAULT_IMAGE = "slfaas/runtime:local"
CONTAINER_UID = 10001  # the image's "slfaas" user; owns nothing the container can see

LABEL_MANAGED = "slfaas.managed"
LABEL_OWNER = "slfaas.owner"            # the node's data dir, for humans and foreign PID namespaces
LABEL_SESSION = "slfaas.session"        # one factory (one node run)
LABEL_NODE_PID = "slfaas.node_pid"
LABEL_NODE_START = "slfaas.node_start"  # the node process's start time: a reused pid is not the node
LABEL_PIDNS = "slfaas.pidns"
LABEL_PYTHON = "slfaas.python"          # image label: "host" (mount the node's Python) or "image"

TASK_DIR = "/var/task"
MODEL_DIR = "/opt/slfaas/model"
RUN_DIR = "/run/slfaas"

_DROP_ENV = ("SLFAAS_BACKBONE_FD", "SLFAAS_NODE_PID", "TMPDIR", "HOME", "PYTHONPATH", "VIRTUAL_ENV",
             "LD_LIBRARY_PATH", "CUDA_VISIBLE_DEVICES")


class DockerUnavailable(NodeError):
    """No Docker engine answers, or the runtime image is missing."""


@dataclass(frozen=True)
class DockerSandboxConfig:
    image: str = DEFAULT_IMAGE
    owner: str = ""              # the node's data dir
    network: str = "none"
    tmp_mb: int = 512            # per-instance /tmp (tmpfs, counted in the memory limit)
    pids_limit: int = 4096       # threads count: torch starts one pool per core
    warm_pool: int = 0           # generic containers kept pre-started (imports done), specialised on demand
    pool_memory_mb: int = 2048   # their limit until specialised (then: the function's MemorySize)


def connect(timeout_s: float = 120) -> Any:
    """A Docker SDK client for the local engine ($DOCKER_HOST or the default socket)."""
    try:
        import docker
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise DockerUnavailable("the Docker SDK for Python is not installed (pip install docker)") from exc
    try:
        client = docker.from_env(timeout=timeout_s, max_pool_size=256)
        client.ping()
    except Exception as exc:  # DockerException, requests' ConnectionError, ...
        where = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
        raise DockerUnavailable(
            f"no Docker engine answers at {where} ({exc.__class__.__name__}). Start one (as root: "
            f"`dockerd --iptables=false --bridge=none &`) or use --sandbox process") from exc
    return client


def _pidns() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def host_python_paths() -> tuple[list[Path], Path]:
    """(directories to mount read-only at their own paths, directory to put on PYTHONPATH)
    for running the node's own Python installation and slfaas inside a container."""
    import slfaas

    package = Path(slfaas.__file__).resolve().parent
    roots: list[Path] = []
    for p in sorted({Path(sys.base_prefix).resolve(), Path(sys.prefix).resolve()}):
        if not any(p.is_relative_to(r) for r in roots):
            roots.append(p)
    if not any(package.is_relative_to(r) for r in roots):
        roots.append(package)
    return roots, package.parent


class _BackboneHandout:
    """Hands a read-only descriptor of the node's backbone memfd to whoever connects on a
    socket that only one container has mounted; closed after the first hand-over (the
    runtime maps the image once at init)."""

    def __init__(self, path: Path, node_fd: int):
        self.path = path
        self._fd = os.open(f"/proc/self/fd/{node_fd}", os.O_RDONLY | os.O_CLOEXEC)  # a read-only reopen
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._sock.bind(str(path))
            os.chmod(path, 0o666)  # the container user connects; the directory keeps host users out
            self._sock.listen(4)
        except BaseException:
            self.close()
            raise
        self._closed = False
        threading.Thread(target=self._serve, daemon=True, name=f"backbone-handout-{path.stem}").start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            with conn:
                try:
                    socket.send_fds(conn, [b"B"], [self._fd])
                except OSError:
                    continue
            self.close()
            return

    def close(self) -> None:
        if getattr(self, "_closed", False):
            return
        self._closed = True
        try:
            self._sock.shutdown(socket.SHUT_RDWR)  # wakes a blocked accept()
        except OSError:
            pass
        self._sock.close()
        self.path.unlink(missing_ok=True)
        try:
            os.close(self._fd)
        except OSError:
            pass


class DockerSandbox(Sandbox):
    def __init__(self, container: Any, pid: int | None, log_sink: LogSink, memory_mb: int,
                 on_end: Callable[["DockerSandbox"], None], closers: tuple[Callable[[], None], ...] = ()):
        self.container = container
        self._pid = pid
        self._sink = log_sink
        self.memory_mb = memory_mb
        self._on_end = on_end
        self._closers = closers
        self._lock = threading.Lock()
        self._code: int | None = None
        self._pump = threading.Thread(target=self._pump_logs, daemon=True, name=f"sandbox-log-{container.name}")
        self._pump.start()

    def _pump_logs(self) -> None:
        for raw in capped_lines(self._log_chunks()):
            self._emit(raw)

    def _log_chunks(self) -> Iterator[bytes]:
        try:
            yield from self.container.logs(stream=True, follow=True, stdout=True, stderr=True)
        except Exception:  # the container was removed under us: nothing more to read
            log.debug("log stream of %s ended", self.container.name, exc_info=True)

    def set_sink(self, log_sink: LogSink) -> None:
        """Where output goes from now on (a warm-pool container gets its function's log)."""
        self._sink = log_sink

    def _emit(self, raw: bytes) -> None:
        try:
            self._sink(raw.decode("utf-8", "replace").rstrip("\r"))
        except Exception:  # a log write must never kill the pump
            log.exception("log sink failed")

    @property
    def pid(self) -> int | None:
        return self._pid

    def wait(self, timeout_s: float | None = None) -> int | None:
        if self._code is not None:
            return self._code
        import docker.errors
        import requests.exceptions

        lost_s = 0.0
        while True:
            try:
                status = self.container.wait(timeout=timeout_s)
                code: int | None = int(status.get("StatusCode", -1))
                break
            except requests.exceptions.ReadTimeout:
                return None  # still running
            except requests.exceptions.ConnectionError:
                if timeout_s is not None:
                    return None
                if lost_s > 60:  # the engine is gone: the container (if any) is beyond our reach
                    log.error("lost the Docker engine while waiting for %s", self.container.name)
                    code = None
                    break
                time.sleep(2)  # the engine restarting: wait for it to answer again
                lost_s += 2
            except docker.errors.NotFound:
                code = None  # removed by someone else (e.g. `docker rm -f`): treat as killed
                break
        return self._finish(code)

    def _finish(self, code: int | None) -> int:
        """Turn the container's end into a process-style status (negative: signal), once."""
        import docker.errors

        with self._lock:
            if self._code is not None:
                return self._code
            oom = False
            try:
                self.container.reload()
                oom = bool(self.container.attrs["State"].get("OOMKilled"))
            except docker.errors.APIError:
                pass
            self._pump.join(timeout=2)  # the last lines (e.g. a traceback) before the verdict
            if oom:
                self._emit(f"container exceeded its memory limit of {self.memory_mb} MB and was "
                           f"OOM-killed".encode())
                code = -9
            elif code is None:
                code = -9
            elif 128 < code < 128 + 65:  # docker-init (PID 1) reports a signal death as 128 + signo
                code = -(code - 128)
            self._code = code
        self._cleanup()
        return code

    def _cleanup(self) -> None:
        import docker.errors

        for close in self._closers:
            try:
                close()
            except Exception:
                log.exception("sandbox cleanup failed")
        try:
            self.container.remove(force=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:  # "removal already in progress"
            log.debug("removing %s: %s", self.container.name, exc)
        self._on_end(self)

    def kill(self) -> None:
        import docker.errors

        if self._code is not None:
            return
        try:
            self.container.kill()
        except docker.errors.APIError:  # not running any more, or gone
            pass

    def stop(self, grace_s: float = 2.0) -> None:
        import docker.errors

        if self._code is None:
            try:
                self.container.stop(timeout=max(1, int(round(grace_s))))
            except docker.errors.APIError:
                pass
        if self.wait(grace_s + 10) is None:
            self.kill()
            self.wait(10)


class DockerSandboxFactory(SandboxFactory):
    name = "docker"

    def __init__(self, config: DockerSandboxConfig | None = None, client: Any = None):
        self.config = config or DockerSandboxConfig()
        self.client = client or connect()
        import docker.errors

        try:
            image = self.client.images.get(self.config.image)
        except docker.errors.ImageNotFound:
            raise DockerUnavailable(f"the runtime image {self.config.image} does not exist: build it with "
                                    f"`slfaas node build-image` (no registry needed)") from None
        self.python_mode = (image.labels or {}).get(LABEL_PYTHON, "image")
        self.session = uuid.uuid4().hex[:12]
        self._identity = {LABEL_MANAGED: "1", LABEL_OWNER: self.config.owner, LABEL_SESSION: self.session,
                          LABEL_NODE_PID: str(os.getpid()), LABEL_NODE_START: _proc_start_ticks(os.getpid()),
                          LABEL_PIDNS: _pidns()}
        # Sockets handed to containers live here (short: Unix socket paths are limited to 108 bytes).
        self._dir = make_work_dir("slfaas-dk-")
        self._lock = threading.Lock()
        self._live: dict[str, DockerSandbox] = {}
        self._closed = False
        reaped = self.reap_orphans()
        self._pool = None
        if self.config.warm_pool > 0:
            from slfaas.gpu_node.sandboxes.docker_pool import docker_warm_pool
            self._pool = docker_warm_pool(self, self.config.warm_pool)
        log.info("docker sandboxes: image %s (%s Python), session %s%s", self.config.image, self.python_mode,
                 self.session, f"; reaped {reaped} orphaned container(s)" if reaped else "")

    # reaping
    def _orphaned(self, labels: dict[str, str]) -> bool:
        if labels.get(LABEL_SESSION) == self.session:
            return False
        if labels.get(LABEL_PIDNS) != _pidns():  # a node we cannot see: only our data dir's are ours
            return bool(self.config.owner) and labels.get(LABEL_OWNER) == self.config.owner
        pid = labels.get(LABEL_NODE_PID, "")
        return not (pid.isdigit() and _proc_start_ticks(int(pid)) == labels.get(LABEL_NODE_START))

    def reap_orphans(self) -> int:
        """Remove containers whose node process is gone (a crash, kill -9, a lost Ctrl-C)."""
        victims = [c for c in self.client.containers.list(all=True, filters={"label": LABEL_MANAGED})
                   if self._orphaned(c.labels)]
        return self._remove(victims)

    def _remove(self, containers: list[Any]) -> int:
        import docker.errors

        removed = 0
        for c in containers:
            try:
                c.remove(force=True)
                removed += 1
                log.info("reaped container %s (%s)", c.name, c.labels.get("slfaas.function", "?"))
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as exc:
                if "already in progress" not in str(exc):
                    log.warning("could not remove container %s: %s", c.name, exc)
        return removed

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._pool is not None:
            self._pool.close()
        with self._lock:
            live = list(self._live.values())
        for sandbox in live:
            sandbox.kill()
            sandbox.wait(10)
        try:
            self._remove(self.client.containers.list(all=True, filters={"label": f"{LABEL_SESSION}={self.session}"}))
        except Exception:
            log.exception("reaping this node's containers at stop failed")
        shutil.rmtree(self._dir, ignore_errors=True)
        self.client.close()

    def warm_count(self) -> int:
        return self._pool.held() if self._pool is not None else 0

    # starting
    def start(self, spec: SandboxSpec, log_sink: LogSink) -> Sandbox:
        if self._pool is not None:
            pooled = self._pool.take(spec, log_sink)
            if pooled is not None:
                return pooled
        from docker.types import Mount

        env = self.runtime_env(spec)
        env.update({"SLFAAS_CODE_DIR": TASK_DIR, "SLFAAS_RUNTIME_SOCKET": f"{RUN_DIR}/runtime.sock"})
        mounts = [Mount(TASK_DIR, str(spec.code_dir), type="bind", read_only=True),
                  Mount(f"{RUN_DIR}/runtime.sock", str(spec.runtime_socket), type="bind", read_only=True)]
        if spec.env.get("SLFAAS_BASE_MODEL_DIR"):
            mounts.append(Mount(MODEL_DIR, spec.env["SLFAAS_BASE_MODEL_DIR"], type="bind", read_only=True))
            env["SLFAAS_BASE_MODEL_DIR"] = MODEL_DIR
        argv = self.python_argv(spec.argv[1:], env, mounts)
        os.chmod(spec.runtime_socket, 0o666)  # for the container user; its directory is private to the node
        extra: dict[str, Any] = {}
        device = spec.env.get("SLFAAS_DEVICE", "cpu")
        if device.startswith("cuda"):
            extra = self._cuda_options(device, spec, mounts, env)
        handout = None
        if spec.env.get("SLFAAS_BACKBONE_FD"):
            handout = _BackboneHandout(self._dir / f"{spec.instance_id}.bb", int(spec.env["SLFAAS_BACKBONE_FD"]))
            mounts.append(Mount(f"{RUN_DIR}/backbone.sock", str(handout.path), type="bind", read_only=True))
            env["SLFAAS_BACKBONE_PATH"] = f"{RUN_DIR}/backbone.sock"
        try:
            container, pid = self.run_container(f"slfaas-{spec.instance_id}", argv, env, mounts, spec.labels,
                                                spec.memory_mb, **extra)
        except BaseException:
            if handout is not None:
                handout.close()
            raise
        sandbox = DockerSandbox(container, pid, log_sink, spec.memory_mb, self.forget,
                                (handout.close,) if handout else ())
        with self._lock:
            self._live[container.id] = sandbox
        return sandbox

    # shared with the warm pool
    def runtime_env(self, spec: SandboxSpec) -> dict[str, str]:
        """The agent's runtime environment, minus what names node-side paths and descriptors."""
        env = {k: v for k, v in spec.env.items() if k not in _DROP_ENV}
        env.update({"HOME": "/tmp", "TMPDIR": "/tmp", "USER": "slfaas", "LAMBDA_TASK_ROOT": TASK_DIR})
        return env

    def python_argv(self, args: tuple[str, ...] | list[str], env: dict[str, str], mounts: list) -> list[str]:
        """``python <args>`` as this image runs it: the node's Python mounted at its own path
        ("host" images), or the image's own ``python3`` with slfaas installed."""
        from docker.types import Mount

        if self.python_mode == "host":
            roots, pythonpath = host_python_paths()
            mounts += [Mount(str(r), str(r), type="bind", read_only=True) for r in roots]
            env.update({"PYTHONPATH": str(pythonpath), "PATH": "/usr/local/bin:/usr/bin:/bin"})
            return [sys.executable, *args]
        env.pop("PATH", None)
        return ["python3", *args]

    def run_container(self, name: str, argv: list[str], env: dict[str, str], mounts: list,
                      labels: Mapping[str, str], memory_mb: int, **extra: Any) -> tuple[Any, int | None]:
        """Create and start one sandbox container: every isolation setting lives here."""
        container = None
        try:
            container = self.client.containers.create(
                self.config.image, command=argv, name=name, labels={**labels, **self._identity},
                environment=env, user=f"{CONTAINER_UID}:{CONTAINER_UID}", working_dir=TASK_DIR,
                mounts=mounts, network_mode=self.config.network, read_only=True,
                tmpfs={"/tmp": f"rw,nosuid,nodev,size={self.config.tmp_mb}m,mode=1777"},
                mem_limit=f"{memory_mb}m", memswap_limit=f"{memory_mb}m",
                pids_limit=self.config.pids_limit, cap_drop=["ALL"], security_opt=["no-new-privileges"],
                init=True, stdin_open=False, tty=False, detach=True, **extra)
            container.start()
            return container, _runtime_pid(container)
        except BaseException:
            if container is not None:
                self._remove([container])
            raise

    @property
    def work_dir(self) -> Path:
        """Node-private directory (mode 0700) for sockets and files handed to containers."""
        return self._dir

    def adopt(self, sandbox: "DockerSandbox") -> None:
        with self._lock:
            self._live[sandbox.container.id] = sandbox

    def forget(self, sandbox: DockerSandbox) -> None:
        with self._lock:
            self._live.pop(sandbox.container.id, None)

    @staticmethod
    def _cuda_options(device: str, spec: SandboxSpec, mounts: list, env: dict[str, str]) -> dict[str, Any]:
        """The node's GPU, and what CUDA IPC needs to open the node's arena from a container.

        - ``device_requests``: only the node's GPU, which then is ``cuda:0`` inside.
        - ``pid_mode="host"`` and ``ipc_mode="host"``: CUDA IPC between processes in different
          PID namespaces fails with "invalid device context" (vLLM's and UCX's container
          setups share the PID and IPC namespaces for it). Untested here: no GPU with Docker.
        Both weaken isolation (host process list visible, though not traceable: no
        capabilities, non-root); this is the price of zero-copy GPU sharing."""
        from docker.types import DeviceRequest, Mount

        index = device.split(":")[1] if ":" in device else "0"
        if spec.env.get("SLFAAS_BACKBONE_IPC"):
            mounts.append(Mount(f"{RUN_DIR}/backbone.ipc", spec.env["SLFAAS_BACKBONE_IPC"], type="bind",
                                read_only=True))
            env["SLFAAS_BACKBONE_IPC"] = f"{RUN_DIR}/backbone.ipc"
        env["SLFAAS_DEVICE"] = "cuda:0"
        return {"device_requests": [DeviceRequest(device_ids=[index], capabilities=[["gpu"]])],
                "pid_mode": "host", "ipc_mode": "host"}


def _runtime_pid(container: Any, timeout_s: float = 5.0) -> int | None:
    """The host pid of the runtime: the child of the container's init (docker-init)."""
    container.reload()
    init_pid = int(container.attrs["State"].get("Pid") or 0)
    if not init_pid:
        return None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{init_pid}/task/{init_pid}/children") as fh:
                children = fh.read().split()
        except OSError:
            return init_pid  # init already gone (the runtime died at once): the exit tells the rest
        if children:
            return int(children[0])
        time.sleep(0.005)
    return init_pid
