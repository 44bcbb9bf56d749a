"""GPU memory figures for the node report: device totals (CUDA) and per-process use (NVML)."""
from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def gpu_memory_report(device: str, instance_pids: dict[int, str], backbone_bytes: int, adapter_bytes: int) -> dict:
    """Device totals; what the node's backbones hold; what the instances' adapters hold (as
    each runtime reported at init); per-instance use from NVML (context, adapter, KV cache)."""
    import torch

    dev = torch.device(device)
    free_b, total_b = torch.cuda.mem_get_info(dev)
    report: dict = {
        "device": device,
        "name": torch.cuda.get_device_name(dev),
        "total_mb": total_b >> 20,
        "used_mb": (total_b - free_b) >> 20,
        "free_mb": free_b >> 20,
        "backbones_mb": backbone_bytes >> 20,
        "adapters_mb": round(adapter_bytes / 2**20, 1),
        "instances": None,
    }
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            handle = pynvml.nvmlDeviceGetHandleByIndex(dev.index or 0)
            procs = pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
            report["instances"] = {instance_pids[p.pid]: (p.usedGpuMemory or 0) >> 20
                                   for p in procs if p.pid in instance_pids}
        finally:
            pynvml.nvmlShutdown()
    except Exception as exc:  # NVML absent or not permitted (e.g. some sandboxes): totals only
        log.debug("NVML per-process memory unavailable: %s", exc)
    return report
