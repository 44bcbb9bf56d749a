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


def test_without_a_driver_entry_the_index_is_the_minor(tmp_path: Path) -> None:
    dev, proc, lib = _host(tmp_path)
    assert gd.gpu_minor(None, 2, proc) == 2
    assert gd.gpu_minor("0000:ff:00.0", 3, proc) == 3     # a bus id the driver does not list
    assert gd.passthrough(3, None, dev, proc, lib).devices[0] == f"{dev}/nvidia3:{dev}/nvidia3:rwm"


def test_a_host_without_the_driver_is_told_what_is_missing(tmp_path: Path) -> None:
    dev, proc, lib = _host(tmp_path, minors=(0,))
    with pytest.raises(gd.GpuNotFound, match="nvidia5"):
        gd.passthrough(5, None, dev, proc, lib)
    (dev / "nvidia-uvm").unlink()
    with pytest.raises(gd.GpuNotFound, match="nvidia-uvm"):
        gd.passthrough(0, None, dev, proc, lib)
    (dev / "nvidia-uvm").touch()
    (lib / "libcuda.so.1").unlink()
    (lib / "libcuda.so").unlink()
    with pytest.raises(gd.GpuNotFound, match="libcuda.so.1"):
        gd.passthrough(0, None, dev, proc, lib)


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
    gpu = gd.passthrough(0, None, dev, proc, lib)
    own = gd.container_gpu(0, gpu, host_namespaces=False)
    assert own.options == {"devices": list(gpu.devices)}          # its own PID and IPC namespaces
    assert dict(own.env) == {"SLFAAS_DEVICE": "cuda:0", "LD_LIBRARY_PATH": gd.DRIVER_LIB_DIR}
    assert (f"{gd.DRIVER_LIB_DIR}/libcuda.so.1", str(lib / "libcuda.so.550.54.15")) in own.library_mounts
    legacy = gd.container_gpu(2, gpu, host_namespaces=True)
    assert legacy.options["pid_mode"] == "host" and legacy.options["ipc_mode"] == "host"
    toolkit = gd.container_gpu(2, None, host_namespaces=False)
    assert toolkit.options == {"device_requests": 2} and not toolkit.library_mounts
    assert dict(toolkit.env) == {"SLFAAS_DEVICE": "cuda:0"}
