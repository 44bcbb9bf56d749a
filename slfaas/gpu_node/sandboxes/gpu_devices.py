"""What a container needs to use one NVIDIA GPU, found on the host without the NVIDIA
Container Toolkit: the GPU's device node plus the driver's control nodes, and the driver's
user-space libraries (``libcuda.so.1`` and its ``libnvidia-*`` companions), which must be the
host's own (they match the kernel module) and are mounted read-only, file by file, into a
directory of their own on the container's ``LD_LIBRARY_PATH``.

Where the toolkit is installed (Docker lists an ``nvidia`` runtime) the node asks for the GPU
with ``device_requests`` instead, as the toolkit expects.
"""
from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from slfaas.runtime_contract import ENV_DEVICE

# inside the container
DRIVER_LIB_DIR = "/opt/slfaas/nvidia/lib"

# the driver's control nodes; the GPU's own node (/dev/nvidiaN) is added per device
_CONTROL_NODES = ("nvidiactl", "nvidia-uvm", "nvidia-uvm-tools")
_DRIVER_LIB = re.compile(r"^lib(cuda|nvidia-[a-z0-9-]+|cudadebugger)\.so(\.\d+)*$")
# where driver libraries live on common hosts (NVIDIA's images, Debian/Ubuntu, RHEL, WSL)
_LIB_DIRS = ("/usr/local/nvidia/lib64", "/usr/local/nvidia/lib", "/usr/lib/x86_64-linux-gnu", "/usr/lib64",
             "/usr/lib/aarch64-linux-gnu", "/usr/lib/wsl/lib")


class GpuNotFound(RuntimeError):
    """The host lacks what a container needs to reach its GPU."""


@dataclass(frozen=True)
class GpuPassthrough:
    """One GPU for containers: ``devices`` as Docker's ``host:container:rwm`` strings,
    ``libraries`` as (host file, file name in ``DRIVER_LIB_DIR``)."""

    devices: tuple[str, ...]
    libraries: tuple[tuple[str, str], ...]

    @property
    def library_path(self) -> str:
        return DRIVER_LIB_DIR


def gpu_minor(pci_bus_id: str | None, index: int, proc_root: Path = Path("/proc"),
              dev_root: Path = Path("/dev")) -> int:
    """The device-node minor (``/dev/nvidiaN``) of the GPU at ``pci_bus_id`` (as CUDA reports
    it, e.g. ``0000:19:00.0``), read from the driver's ``/proc`` entry. Without that entry the
    node cannot tell which node is its GPU (CUDA's order is not the driver's; the node may see
    fewer GPUs than exist): only a host with a single GPU node is answered, never a guess."""
    gpus = proc_root / "driver/nvidia/gpus"
    if pci_bus_id:
        info = gpus / pci_bus_id.lower() / "information"
        try:
            for line in info.read_text().splitlines():
                key, _, value = line.partition(":")
                if key.strip() == "Device Minor":
                    return int(value.strip())
        except (OSError, ValueError):
            pass
    nodes = sorted(p.name for p in dev_root.glob("nvidia[0-9]*") if p.name[6:].isdigit())
    if len(nodes) == 1:
        return int(nodes[0][6:])
    raise GpuNotFound(f"cannot tell which of {len(nodes)} NVIDIA device nodes is the node's GPU {index} "
                      f"(no /proc/driver/nvidia entry for PCI bus id {pci_bus_id}); install the NVIDIA "
                      f"Container Toolkit or use --sandbox process")


def driver_libraries(lib_dir: Path) -> tuple[tuple[str, str], ...]:
    """The driver's libraries in ``lib_dir``: every name (sonames are links) mapped to the
    real file behind it, so that the container needs no links of its own."""
    out = []
    for entry in sorted(lib_dir.iterdir()):
        if _DRIVER_LIB.match(entry.name) and entry.exists():
            out.append((str(entry.resolve()), entry.name))
    return tuple(out)


def find_libcuda(maps: Path = Path("/proc/self/maps"), lib_dirs: tuple[str, ...] = _LIB_DIRS) -> Path:
    """The directory of the ``libcuda.so.1`` the node itself runs (it has initialised CUDA by
    the time it starts containers), else of the first one found where drivers usually live,
    else where the dynamic linker's cache says."""
    try:
        for line in maps.read_text().splitlines():
            path = line.split()[-1] if len(line.split()) >= 6 else ""
            if re.search(r"/libcuda\.so[.\d]*$", path) and os.path.exists(path):
                return Path(path).parent
    except OSError:
        pass
    for d in lib_dirs:
        if (Path(d) / "libcuda.so.1").exists():
            return Path(d)
    try:
        out = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        out = ""
    for line in out.splitlines():
        if line.strip().startswith("libcuda.so.1 ") and "=>" in line:
            return Path(line.split("=>")[1].strip()).parent
    raise GpuNotFound("no libcuda.so.1 on this host: is the NVIDIA driver installed?")


def passthrough(index: int, pci_bus_id: str | None = None, dev_root: Path = Path("/dev"),
                proc_root: Path = Path("/proc"), lib_dir: Path | None = None) -> GpuPassthrough:
    """What a container needs to use the node's GPU ``index`` (as ``cuda:0`` inside)."""
    minor = gpu_minor(pci_bus_id, index, proc_root, dev_root)
    gpu = dev_root / f"nvidia{minor}"
    missing = [str(p) for p in (gpu, dev_root / "nvidiactl", dev_root / "nvidia-uvm") if not p.exists()]
    if missing:
        raise GpuNotFound(f"missing NVIDIA device node(s) {', '.join(missing)}: load the driver "
                          f"(nvidia-modprobe -u -c=0) or use --sandbox process")
    nodes = [gpu] + [dev_root / n for n in _CONTROL_NODES if (dev_root / n).exists()]
    libraries = driver_libraries(lib_dir if lib_dir is not None else find_libcuda())
    if not any(name == "libcuda.so.1" for _, name in libraries):
        raise GpuNotFound("the driver's library directory has no libcuda.so.1")
    # the container sees the GPU's node at the same path; the runtime uses it as cuda:0
    return GpuPassthrough(tuple(f"{p}:{p}:rwm" for p in nodes), libraries)


@dataclass(frozen=True)
class ContainerGpu:
    """How one container gets the GPU: Docker ``create`` options (``device_requests`` is
    given as the GPU index; the caller makes Docker's type of it), read-only library mounts
    (container path, host file) and environment."""

    options: dict
    library_mounts: tuple[tuple[str, str], ...] = ()
    env: tuple[tuple[str, str], ...] = ()


def container_gpu(gpu_id: int | str, gpu: GpuPassthrough | None, host_namespaces: bool) -> ContainerGpu:
    """``gpu`` None: the NVIDIA Container Toolkit does the passing through, of ``gpu_id`` (best
    the GPU's UUID: a bare index is NVML's order, not CUDA's). ``host_namespaces``:
    the container shares the host's PID and IPC namespaces (what the legacy CUDA IPC handle
    needs); a VMM descriptor needs neither."""
    env = [(ENV_DEVICE, "cuda:0")]
    if gpu is None:
        options: dict = {"device_requests": gpu_id}
        mounts: tuple[tuple[str, str], ...] = ()
    else:
        options = {"devices": list(gpu.devices)}
        mounts = tuple((f"{DRIVER_LIB_DIR}/{name}", host) for host, name in gpu.libraries)
        env.append(("LD_LIBRARY_PATH", gpu.library_path))
    if host_namespaces:
        options.update(pid_mode="host", ipc_mode="host")
    return ContainerGpu(options, mounts, tuple(env))


def node_gpu_uuid(index: int) -> str:
    """The node's GPU ``index`` as the toolkit names it (``GPU-<uuid>``); the index itself
    where torch cannot say."""
    try:
        import torch

        return f"GPU-{torch.cuda.get_device_properties(index).uuid}"
    except Exception:
        return str(index)


def node_pci_bus_id(index: int) -> str | None:
    """The PCI bus id CUDA gives the node's GPU ``index`` (None where torch cannot say)."""
    try:
        import torch

        props = torch.cuda.get_device_properties(index)
        return f"{props.pci_domain_id:04x}:{props.pci_bus_id:02x}:{props.pci_device_id:02x}.0"
    except Exception:   # no CUDA, an old torch without the fields: fall back to the index
        return None
