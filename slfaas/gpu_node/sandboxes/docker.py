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
  On CUDA the arena's VMM descriptor and its tensor table travel the same way, and the GPU
  is passed through (see ``gpu_options``).

Every container carries labels (node, function, version, instance, and the owning node
process) so that leftovers of a crashed node are reaped at the next start, and everything
of this node at stop. A warm pool of pre-started generic containers (``docker_pool``) is
attached by the node's builder.
"""
from __future__ import annotations

import logging
import os
import shutil
import sys
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from slfaas import runtime_contract as rc
from slfaas.errors import NodeError
from slfaas.gpu_node.sandboxes.base import LogSink, Sandbox, SandboxFactory, SandboxSpec
from slfaas.gpu_node.sandboxes.docker_sandbox import BackboneHandout, DockerSandbox, runtime_pid
from slfaas.gpu_node.sandboxes.host_python import host_python_paths
from slfaas.gpu_node.sandboxes.pool_support import make_work_dir
from slfaas.gpu_node.sandboxes.pool_support import proc_start_ticks as _proc_start_ticks  # labels name the node process

log = logging.getLogger(__name__)

DEFAULT_IMAGE = "slfaas/runtime:local"
CONTAINER_UID = 10001  # the image's "slfaas" user; owns nothing the container can see

CLOSE_WORKERS = 16   # Docker API calls at once while a node stops

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

_DROP_ENV = (*rc.HANDOVER_FD_ENV, rc.ENV_NODE_PID, "TMPDIR", "HOME", "PYTHONPATH", "VIRTUAL_ENV",
             "LD_LIBRARY_PATH", "CUDA_VISIBLE_DEVICES")


NO_TOOLKIT_GPUS = ("NVIDIA_VISIBLE_DEVICES", "void")


class DockerUnavailable(NodeError):
    """No Docker engine answers, or the runtime image is missing."""


@dataclass(frozen=True)
class DockerSandboxConfig:
    image: str = DEFAULT_IMAGE
    owner: str = ""              # the node's data dir
    network: str = "none"
    tmp_mb: int = 512            # per-instance /tmp (tmpfs, counted in the memory limit)
    pids_limit: int = 4096       # threads count: torch starts one pool per core
    pool_memory_mb: int = 2048   # their limit until specialised (then: the function's MemorySize)
    cuda_pool_memory_mb: int = 8192   # a CUDA runtime maps the driver's and torch's CUDA libraries
    cuda_host_namespaces: bool = False   # GPU containers in the host's PID/IPC namespaces even with VMM


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
        self._toolkit: bool | None = None
        self._gpu: Any = None   # gpu_devices.GpuPassthrough, found once
        reaped = self.reap_orphans()
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
        return self._remove([c for c in self._listed(LABEL_MANAGED) if self._orphaned(c.get("Labels") or {})])

    def _listed(self, label: str) -> list[dict[str, Any]]:
        """Containers carrying ``label``, as the engine lists them (id, names, labels): in one
        call, where the SDK's ``containers.list`` inspects each one after and fails on a
        container another node removed in between (several nodes share an engine)."""
        return list(self.client.api.containers(all=True, filters={"label": label}))

    def _remove(self, containers: list[dict[str, Any]]) -> int:
        import docker.errors

        removed = 0
        for c in containers:
            name = ((c.get("Names") or ["?"])[0]).lstrip("/")
            try:
                self.client.api.remove_container(c["Id"], force=True)
                removed += 1
                log.info("reaped container %s (%s)", name, (c.get("Labels") or {}).get("slfaas.function", "?"))
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as exc:
                if "already in progress" not in str(exc):
                    log.warning("could not remove container %s: %s", name, exc)
        return removed

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.pool is not None:
            self.pool.close()
            self.pool = None
        with self._lock:
            live = list(self._live.values())

        def end(sandbox: DockerSandbox) -> None:
            try:
                sandbox.kill()
                sandbox.wait(10)
            except Exception:   # the engine gone or restarting: the reaping below still runs
                log.exception("ending container %s at stop failed", sandbox.container.name)

        # All containers at once: one after another (a kill, a wait, a removal each), a node
        # with many instances took minutes to stop while another client kept the engine busy.
        with ThreadPoolExecutor(max_workers=CLOSE_WORKERS, thread_name_prefix="docker-close") as workers:
            list(workers.map(end, live))
            try:
                left = self._listed(f"{LABEL_SESSION}={self.session}")
                list(workers.map(lambda c: self._remove([c]), left))
            except Exception:
                log.exception("reaping this node's containers at stop failed")
        shutil.rmtree(self._dir, ignore_errors=True)
        self.client.close()

    # starting
    def start(self, spec: SandboxSpec, log_sink: LogSink) -> Sandbox:
        pooled = self.take_pooled(spec, log_sink)
        if pooled is not None:
            return pooled
        from docker.types import Mount

        env = self.runtime_env(spec)
        env.update({rc.ENV_CODE_DIR: TASK_DIR, rc.ENV_RUNTIME_SOCKET: f"{RUN_DIR}/runtime.sock"})
        mounts = [Mount(TASK_DIR, str(spec.code_dir), type="bind", read_only=True),
                  Mount(f"{RUN_DIR}/runtime.sock", str(spec.runtime_socket), type="bind", read_only=True)]
        if spec.env.get(rc.ENV_BASE_MODEL_DIR):
            mounts.append(Mount(MODEL_DIR, spec.env[rc.ENV_BASE_MODEL_DIR], type="bind", read_only=True))
            env[rc.ENV_BASE_MODEL_DIR] = MODEL_DIR
        argv = self.python_argv(spec.argv[1:], env, mounts)
        os.chmod(spec.runtime_socket, 0o666)  # for the container user; its directory is private to the node
        extra: dict[str, Any] = {}
        device = spec.env.get(rc.ENV_DEVICE, "cpu")
        legacy_ipc = bool(spec.env.get(rc.ENV_BACKBONE_IPC))
        if legacy_ipc:   # a file holding the arena's CUDA IPC handle: mounted
            mounts.append(Mount(f"{RUN_DIR}/backbone.ipc", spec.env[rc.ENV_BACKBONE_IPC], type="bind",
                                read_only=True))
            env[rc.ENV_BACKBONE_IPC] = f"{RUN_DIR}/backbone.ipc"
        if device.startswith("cuda"):
            extra = self.gpu_options(device, mounts, env, legacy_ipc)
        handout = None
        handed = BackboneHandout.descriptors(spec.env)
        if handed is not None:   # the CPU image, or the GPU arena's VMM descriptor and table
            handout = BackboneHandout(self._dir / f"{spec.instance_id}.bb", *handed)
            mounts.append(Mount(f"{RUN_DIR}/backbone.sock", str(handout.path), type="bind", read_only=True))
            env[rc.ENV_BACKBONE_PATH] = f"{RUN_DIR}/backbone.sock"
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
        env = {k: v for k, v in spec.env.items() if k not in _DROP_ENV and not k.startswith("NVIDIA_")}
        env.update({"HOME": "/tmp", "TMPDIR": "/tmp", "USER": "slfaas", "LAMBDA_TASK_ROOT": TASK_DIR})
        # on a host whose default runtime is the NVIDIA toolkit's, no GPU unless the node asks for
        # one (an image's or a function's NVIDIA_VISIBLE_DEVICES=all would otherwise get them all)
        env[NO_TOOLKIT_GPUS[0]] = NO_TOOLKIT_GPUS[1]
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
            return container, runtime_pid(container)
        except BaseException:
            if container is not None:
                self._remove([{"Id": container.id, "Names": [name], "Labels": labels}])
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

    def has_nvidia_toolkit(self) -> bool:
        """Docker lists the NVIDIA Container Toolkit's runtime (then ``device_requests`` work)."""
        if self._toolkit is None:
            try:
                self._toolkit = "nvidia" in (self.client.info().get("Runtimes") or {})
            except Exception:   # an engine that cannot say: find the GPU ourselves
                self._toolkit = False
        return self._toolkit

    def gpu_options(self, device: str, mounts: list, env: dict[str, str], legacy_ipc: bool) -> dict[str, Any]:
        """The node's GPU (``cuda:0`` inside), for a container's ``create``.

        - With the NVIDIA Container Toolkit: ``device_requests`` for that GPU alone.
        - Without it: the GPU's device node and the driver's control nodes, and the host's
          driver libraries mounted read-only (``gpu_devices``).
        - Namespaces: a backbone borrowed as a CUDA VMM descriptor (the default) arrives over
          the container's socket, so the container keeps its own PID and IPC namespaces. The
          legacy CUDA IPC handle (``legacy_ipc``) only opens between processes in one PID
          namespace ("invalid device context" otherwise), so those containers share the host's
          PID and IPC namespaces (the host's processes visible, though not traceable: no
          capabilities, non-root). ``cuda_host_namespaces`` forces that for VMM too."""
        from docker.types import DeviceRequest, Mount

        plan = self.gpu_plan(device, legacy_ipc)
        mounts += [Mount(target, host, type="bind", read_only=True) for target, host in plan.library_mounts]
        env.update(plan.env)
        extra = dict(plan.options)
        if "device_requests" in extra:   # the toolkit's id: the GPU's UUID (its index is NVML's, not CUDA's)
            env.pop(NO_TOOLKIT_GPUS[0], None)
            extra["device_requests"] = [DeviceRequest(device_ids=[str(extra["device_requests"])],
                                                      capabilities=[["gpu"]])]
        return extra

    def gpu_plan(self, device: str, legacy_ipc: bool = False) -> Any:
        """``gpu_devices.ContainerGpu`` for the node's ``device`` (found once)."""
        from slfaas.gpu_node.sandboxes import gpu_devices

        index = int(device.split(":")[1]) if ":" in device else 0
        if self.has_nvidia_toolkit():
            return gpu_devices.container_gpu(gpu_devices.node_gpu_uuid(index), None,
                                             legacy_ipc or self.config.cuda_host_namespaces)
        if self._gpu is None:
            self._gpu = gpu_devices.passthrough(index, gpu_devices.node_pci_bus_id(index))
        return gpu_devices.container_gpu(index, self._gpu, legacy_ipc or self.config.cuda_host_namespaces)
