"""A GPU for containers without the NVIDIA Container Toolkit: device nodes and driver
libraries found on a (fake) host; the options a container is created with."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from slfaas.gpu_node.sandboxes import gpu_devices as gd


def _host(tmp_path: Path, minors: tuple[int, ...] = (0, 1, 2, 3)) -> tuple[Path, Path, Path]:
    dev, proc, lib = tmp_path / "dev", tmp_path / "proc", tmp_path / "lib"
    for d in (dev, lib):
        d.mkdir()
    for name in [f"nvidia{m}" for m in minors] + ["nvidiactl", "nvidia-uvm", "nvidia-modeset"]:
        (dev / name).touch()
    gpus = proc / "driver/nvidia/gpus"
    for minor, bus in zip(minors, ("0000:19:00.0", "0000:3b:00.0", "0000:4c:00.0", "0000:5d:00.0")):
        (gpus / bus).mkdir(parents=True)
        (gpus / bus / "information").write_text(f"Model: \t\t NVIDIA H200\nIRQ:   \t\t 42\nDevice Minor: \t {minor}\n")
    for real in ("libcuda.so.550.54.15", "libnvidia-ml.so.550.54.15", "libnvidia-ptxjitcompiler.so.550.54.15",
                 "libfoo.so.1", "libcudart.so.12"):
        (lib / real).write_bytes(b"\x7fELF")
    os.symlink("libcuda.so.550.54.15", lib / "libcuda.so.1")
    os.symlink("libcuda.so.1", lib / "libcuda.so")
    os.symlink("libnvidia-ml.so.550.54.15", lib / "libnvidia-ml.so.1")
    os.symlink("libnvidia-gone.so.550", lib / "libnvidia-gone.so.1")   # dangling: skipped
    return dev, proc, lib


def test_the_gpus_own_node_by_pci_bus_id_and_the_drivers_libraries(tmp_path: Path) -> None:
    dev, proc, lib = _host(tmp_path, minors=(2, 0, 3, 1))
    gpu = gd.passthrough(1, "0000:3B:00.0", dev, proc, lib)   # CUDA index 1 is minor 0 on this host
    assert gpu.devices == (f"{dev}/nvidia0:{dev}/nvidia0:rwm", f"{dev}/nvidiactl:{dev}/nvidiactl:rwm",
                           f"{dev}/nvidia-uvm:{dev}/nvidia-uvm:rwm")
    names = dict((name, host) for host, name in gpu.libraries)
    # the driver's own libraries, every name resolved to its real file; never the CUDA runtime or others
    assert set(names) == {"libcuda.so", "libcuda.so.1", "libcuda.so.550.54.15", "libnvidia-ml.so.1",
                          "libnvidia-ml.so.550.54.15", "libnvidia-ptxjitcompiler.so.550.54.15"}
    assert names["libcuda.so.1"] == str(lib / "libcuda.so.550.54.15")
    assert all(not Path(host).is_symlink() for host in names.values())


def test_without_a_driver_entry_the_gpu_is_never_guessed(tmp_path: Path) -> None:
    dev, proc, lib = _host(tmp_path)
    for bus in (None, "0000:ff:00.0"):          # no bus id, or one the driver does not list
        with pytest.raises(gd.GpuNotFound, match="cannot tell which of 4"):
            gd.passthrough(2, bus, dev, proc, lib)
    (tmp_path / "one").mkdir()
    one, _, _ = _host(tmp_path / "one", minors=(7,))
    assert gd.gpu_minor(None, 0, tmp_path / "none", one) == 7   # a single GPU node: that one


def test_a_host_without_the_driver_is_told_what_is_missing(tmp_path: Path) -> None:
    dev, proc, lib = _host(tmp_path, minors=(0,))
    (dev / "nvidia0").unlink()
    with pytest.raises(gd.GpuNotFound, match="nvidia0"):
        gd.passthrough(0, "0000:19:00.0", dev, proc, lib)
    (dev / "nvidia0").touch()
    (dev / "nvidia-uvm").unlink()
    with pytest.raises(gd.GpuNotFound, match="nvidia-uvm"):
        gd.passthrough(0, "0000:19:00.0", dev, proc, lib)
    (dev / "nvidia-uvm").touch()
    (lib / "libcuda.so.1").unlink()
    (lib / "libcuda.so").unlink()
    with pytest.raises(gd.GpuNotFound, match="libcuda.so.1"):
        gd.passthrough(0, "0000:19:00.0", dev, proc, lib)


def test_libcuda_is_found_where_the_node_maps_it(tmp_path: Path) -> None:
    _, _, lib = _host(tmp_path)
    maps = tmp_path / "maps"
    maps.write_text("7f0000000000-7f0000001000 r--p 00000000 00:2f 123  /usr/lib/libc.so.6\n"
                    f"7f0000002000-7f0000003000 r-xp 00000000 00:2f 456  {lib}/libcuda.so.550.54.15\n")
    assert gd.find_libcuda(maps, lib_dirs=()) == lib
    maps.write_text("")
    assert gd.find_libcuda(maps, lib_dirs=(str(tmp_path / "none"), str(lib))) == lib


def test_container_options_with_and_without_the_toolkit(tmp_path: Path) -> None:
    dev, proc, lib = _host(tmp_path)
    gpu = gd.passthrough(0, "0000:19:00.0", dev, proc, lib)
    own = gd.container_gpu(0, gpu, host_namespaces=False)
    assert own.options == {"devices": list(gpu.devices)}          # its own PID and IPC namespaces
    assert dict(own.env) == {"SLFAAS_DEVICE": "cuda:0", "LD_LIBRARY_PATH": gd.DRIVER_LIB_DIR}
    assert (f"{gd.DRIVER_LIB_DIR}/libcuda.so.1", str(lib / "libcuda.so.550.54.15")) in own.library_mounts
    legacy = gd.container_gpu(2, gpu, host_namespaces=True)
    assert legacy.options["pid_mode"] == "host" and legacy.options["ipc_mode"] == "host"
    toolkit = gd.container_gpu("GPU-8f7e", None, host_namespaces=False)
    assert toolkit.options == {"device_requests": "GPU-8f7e"} and not toolkit.library_mounts
    assert dict(toolkit.env) == {"SLFAAS_DEVICE": "cuda:0"}


def test_a_container_gets_no_node_descriptor_numbers_and_no_gpu_it_was_not_given(tmp_path: Path) -> None:
    from slfaas.gpu_node.sandboxes.base import SandboxSpec
    from slfaas.gpu_node.sandboxes.docker import DockerSandboxFactory
    from slfaas.runtime_contract import HANDOVER_FD_ENV

    env = {name: "7" for name in HANDOVER_FD_ENV}
    env.update({"NVIDIA_VISIBLE_DEVICES": "all", "NVIDIA_DRIVER_CAPABILITIES": "all", "MY_SETTING": "1"})
    spec = SandboxSpec("i-1", "fn", "$LATEST", ("python",), env, tmp_path, tmp_path / "s.sock", 1024)
    got = DockerSandboxFactory.runtime_env(object.__new__(DockerSandboxFactory), spec)
    assert not set(HANDOVER_FD_ENV) & set(got)                      # the node's fd numbers mean nothing inside
    assert got["NVIDIA_VISIBLE_DEVICES"] == "void" and "NVIDIA_DRIVER_CAPABILITIES" not in got
    assert got["MY_SETTING"] == "1"
