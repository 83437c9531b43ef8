"""How much memory a device has left, for sizing the teacher cache."""

from __future__ import annotations

import os

import torch


def available_bytes(device: torch.device) -> int:
    """Free memory now: the CUDA device's free memory, or the host's MemAvailable (RAM the kernel can hand out
    without swapping, page cache included) for the CPU."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024  # the file counts kB
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def budget_bytes(device: torch.device, free: int, gpu_share: float | None = None) -> int:
    """Memory this process may plan on: `free` (available_bytes), on CUDA at most `gpu_share` of the card's total.
    Trials packed on one GPU (resources.gpu < 1) each see the whole card free when they start together; without
    the cap every one of them would size its teacher cache for the card alone."""
    if device.type != "cuda" or gpu_share is None or gpu_share >= 1:
        return free
    _free, total = torch.cuda.mem_get_info(device)
    return min(free, int(gpu_share * total))


def gib(n_bytes: float) -> str:
    return f"{n_bytes / 2**30:.2f} GiB"
