"""The command line of one isolated process sandbox: bubblewrap builds the view, setpriv drops
to the instance's uid (the reasons for this order are in ``isolation``).

What a sandbox sees, all read-only unless said otherwise:
- the system's /usr (and /bin, /lib... as the host has them), the dynamic loader's cache, the
  node's Python installation and the slfaas package, each at its own path;
- ``/var/task``: the function's code dir (cold starts; a warm-pool runtime gets its files as
  descriptors instead); ``/opt/slfaas/model``: the base model's files except weights;
- ``/run/slfaas``: its Runtime API socket (cold starts), or its warm-pool slot directory;
- a fresh /proc of its own PID namespace, a minimal /dev, and private, size-bounded tmpfs
  ``/tmp`` and ``/dev/shm`` (the only writable places);
- on CUDA only: the NVIDIA device nodes and /sys (the driver reads it).
Nothing else: not the data dir, the registry, other functions' code or logs, other sockets.
"""
from __future__ import annotations

import glob
import os
import site
import sys
from pathlib import Path
from typing import Mapping

from slfaas import runtime_contract as rc


TASK_DIR = "/var/task"
MODEL_DIR = "/opt/slfaas/model"
RUN_DIR = "/run/slfaas"
RUNTIME_SOCKET = f"{RUN_DIR}/runtime.sock"

TMP_BYTES = 512 << 20    # /tmp (in the instance's memory cgroup where there is one)
SHM_BYTES = 64 << 20
MAX_PROCESSES = 4096     # RLIMIT_NPROC of the instance's uid: threads count (a pool per core)

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".h5", ".msgpack", ".onnx")
_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_SYSTEM_FILES = ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/localtime")
# Names of the node's side that mean nothing (or the wrong thing) inside
_DROP_ENV = (rc.ENV_NODE_PID, "TMPDIR", "HOME", "PYTHONPATH", "PWD", "OLDPWD")


def python_mounts(python: str) -> tuple[list[Path], str]:
    """(directories to mount at their own paths, PYTHONPATH) for running ``python`` and slfaas."""
    from slfaas.gpu_node.sandboxes.host_python import host_python_paths

    roots, package_parent = host_python_paths()
    paths = [str(package_parent)]
    user_site = site.getusersitepackages() if site.ENABLE_USER_SITE else ""
    if user_site and user_site in sys.path and os.path.isdir(user_site):
        roots.append(Path(user_site))   # HOME is /tmp inside: it goes on PYTHONPATH instead
        paths.append(user_site)
    interpreter = Path(python).resolve()
    if not any(interpreter.is_relative_to(r) for r in roots):
        roots.append(interpreter.parents[1])   # <prefix>/bin/python -> <prefix>
    return roots, os.pathsep.join(paths)


def sandbox_env(env: Mapping[str, str], pythonpath: str, python: str) -> dict[str, str]:
    """The runtime's environment with the node's paths replaced by the sandbox's."""
    out = {k: v for k, v in env.items() if k not in _DROP_ENV}
    out.update({"HOME": "/tmp", "TMPDIR": "/tmp", "USER": "slfaas", "PYTHONPATH": pythonpath,
                "PATH": f"{Path(python).parent}:/usr/local/bin:/usr/bin:/bin"})
    if rc.ENV_CODE_DIR in env:
        out.update({rc.ENV_CODE_DIR: TASK_DIR, rc.ENV_TASK_ROOT: TASK_DIR})
    if rc.ENV_RUNTIME_SOCKET in env:
        out[rc.ENV_RUNTIME_SOCKET] = RUNTIME_SOCKET
    if rc.ENV_BASE_MODEL_DIR in env:
        out[rc.ENV_BASE_MODEL_DIR] = MODEL_DIR
    return out


def model_files(model_dir: Path, weights: bool = False) -> list[Path]:
    """The base model's top-level files a runtime reads (config, tokenizer): not its weights,
    which it borrows from the node's backbone, unless ``weights`` (it loads its own)."""
    if not model_dir.is_dir():
        return []
    return sorted(p for p in model_dir.iterdir() if p.is_file() and (weights or not p.name.endswith(_WEIGHT_SUFFIXES)))


def model_binds(model_dir: Path, weights: bool = False) -> list[str]:
    """The base model's config and tokenizer at MODEL_DIR (its weights are the node's backbone;
    with ``weights``, those too)."""
    binds: list[str] = []
    for f in model_files(model_dir, weights):
        binds += ["--ro-bind", str(f), f"{MODEL_DIR}/{f.name}"]
    return binds


def instance_binds(code_dir: Path, runtime_socket: Path, env: Mapping[str, str]) -> list[str]:
    """A cold-started instance's own files; the base model's weights only for an instance that
    loads its own backbone from the checkpoint (a node without sharing)."""
    binds = ["--ro-bind", str(code_dir), TASK_DIR, "--ro-bind", str(runtime_socket), RUNTIME_SOCKET]
    if env.get(rc.ENV_BASE_MODEL_DIR):
        model_dir = Path(env[rc.ENV_BASE_MODEL_DIR])
        weights = env.get(rc.ENV_BACKBONE_PRIVATE) == rc.PRIVATE_CHECKPOINT
        if weights:
            _check_world_readable(model_dir)
        binds += model_binds(model_dir, weights)
    return binds


def _check_world_readable(model_dir: Path) -> None:
    """The instance runs as its own uid: a weight file it cannot read would fail deep inside
    transformers; say which one instead."""
    closed = [p.name for p in model_files(model_dir, weights=True) if not p.stat().st_mode & 0o004]
    if closed:
        raise PermissionError(f"the instance loads its backbone from {model_dir} as its own uid, but "
                              f"{', '.join(closed[:3])} is not world-readable (chmod o+r)")


def bwrap_argv(bwrap: str, roots: list[Path], binds: list[str], chdir: str, cuda: bool) -> list[str]:
    """bubblewrap's part: namespaces, the filesystem view, lifetime."""
    argv = [bwrap, "--unshare-pid", "--unshare-ipc", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try",
            "--hostname", "slfaas", "--die-with-parent", "--new-session"]
    for d in _SYSTEM_DIRS:
        if os.path.islink(d):
            argv += ["--symlink", os.readlink(d), d]
        elif os.path.isdir(d):
            argv += ["--ro-bind", d, d]
    destinations = [*_SYSTEM_FILES, *map(str, roots), *(binds[i + 2] for i, o in enumerate(binds) if o.endswith("bind"))]
    argv += _parent_dirs(destinations)
    for f in _SYSTEM_FILES:
        argv += ["--ro-bind-try", f, f]
    for r in roots:
        argv += ["--ro-bind", str(r), str(r)]
    argv += ["--proc", "/proc", "--dev", "/dev",
             "--perms", "1777", "--size", str(TMP_BYTES), "--tmpfs", "/tmp",
             "--perms", "1777", "--size", str(SHM_BYTES), "--tmpfs", "/dev/shm"]
    if cuda:
        for dev in sorted(glob.glob("/dev/nvidia*")):
            argv += ["--dev-bind", dev, dev]
        argv += ["--ro-bind", "/sys", "/sys"]
    argv += binds
    argv += ["--remount-ro", "/", "--chdir", chdir]
    return argv


def _parent_dirs(destinations: list[str]) -> list[str]:
    """bwrap makes missing parents of a mount point mode 0700 (root's): make them 0755 first so
    that the sandbox's uid can reach what is mounted below (not inside the system's mounts)."""
    mounted = [d for d in _SYSTEM_DIRS if os.path.isdir(d) and not os.path.islink(d)]
    parents: set[str] = set()
    for dest in destinations:
        for parent in Path(dest).parents:
            p = str(parent)
            if p != "/" and not any(p == m or p.startswith(m + "/") for m in mounted):
                parents.add(p)
    argv: list[str] = []
    for p in sorted(parents, key=lambda q: (q.count("/"), q)):
        argv += ["--perms", "0755", "--dir", p]
    return argv


def setpriv_argv(setpriv: str, uid: int) -> list[str]:
    """Become ``uid`` for good: no groups, no capabilities (none inheritable, none to regain),
    no privileges from setuid files."""
    return [setpriv, f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--inh-caps=-all",
            "--bounding-set=-all", "--no-new-privs", "--"]
