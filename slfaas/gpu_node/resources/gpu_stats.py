"""GPU memory figures: device totals (CUDA) and per-process use (NVML, where it can be read)."""
from __future__ import annotations

import logging

from slfaas.gpu_node.types import GpuMemory

log = logging.getLogger(__name__)


def device_free_mb(device: str) -> float:
    import torch

    free_b, _total = torch.cuda.mem_get_info(torch.device(device))
    return free_b / 2**20


def gpu_name(device: str) -> str | None:
    if not device.startswith("cuda"):
        return None
    try:
        import torch
        return str(torch.cuda.get_device_name(torch.device(device)))
    except Exception:  # the price sheet's lookup then says which type it does not know
        return None


def process_gpu_mb(device: str, pids: set[int]) -> dict[int, int] | None:
    """Device memory used by each of ``pids`` (context, allocations), from NVML; None where
    NVML is absent or not permitted (e.g. some sandboxes)."""
    try:
        import pynvml
        import torch

        pynvml.nvmlInit()
        try:
            handle = pynvml.nvmlDeviceGetHandleByIndex(torch.device(device).index or 0)
            procs = pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
            return {p.pid: (p.usedGpuMemory or 0) >> 20 for p in procs if p.pid in pids}
        finally:
            pynvml.nvmlShutdown()
    except Exception as exc:
        log.debug("NVML per-process memory unavailable: %s", exc)
        return None


def gpu_memory_report(device: str, instance_pids: dict[int, str], backbone_bytes: int, adapter_bytes: int,
                      instance_estimate_mb: int) -> GpuMemory:
    """Device totals; what the node's backbones hold; what the instances' adapters hold (as
    each runtime reported at init); per-instance use from NVML (context, adapter, KV cache)."""
    import torch

    dev = torch.device(device)
    free_b, total_b = torch.cuda.mem_get_info(dev)
    per_pid = process_gpu_mb(device, set(instance_pids))
    return GpuMemory(
        device=device, name=torch.cuda.get_device_name(dev), total_mb=total_b >> 20,
        used_mb=(total_b - free_b) >> 20, free_mb=free_b >> 20, backbones_mb=backbone_bytes >> 20,
        adapters_mb=round(adapter_bytes / 2**20, 1),
        instances=None if per_pid is None else {instance_pids[p]: mb for p, mb in per_pid.items()},
        instance_estimate_mb=instance_estimate_mb)
