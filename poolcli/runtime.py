"""Device selection, seeding and the torchrun process group (shared by every command that runs a model)."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

from .errors import BadInputError


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise BadInputError("--device cuda asked for, but no CUDA GPU is visible; use --device cpu or auto")
    try:
        return torch.device(name)
    except RuntimeError:
        raise BadInputError(f"unknown --device '{name}': use auto, cpu or cuda[:N]") from None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


_ALLOCATOR_BOUNDED = False


def bound_allocator(threshold: int = 1 << 20) -> None:
    """Make glibc return large freed blocks to the OS (a fixed mmap threshold of ``threshold`` bytes).

    glibc raises its mmap threshold after a large block is freed, so later large blocks come from the heap
    and stay in the process after they are freed: a loop over equal-sized chunks then grows far past its
    working set (measured for the retrieval metrics at 10k images: 0.65 GiB for a 256 MiB budget, 0.08 GiB
    with this). Linux/glibc only, once per process; a no-op elsewhere."""
    global _ALLOCATOR_BOUNDED
    if _ALLOCATOR_BOUNDED:
        return
    _ALLOCATOR_BOUNDED = True
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(-3, int(threshold))  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def init_distributed() -> tuple[int, int]:
    """(rank, world size): under torchrun (``WORLD_SIZE`` > 1) the process group is joined first (nccl with
    CUDA, else gloo); (0, 1) in a plain process."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def main_process() -> bool:
    """Whether this process writes and reports: rank 0 under torchrun, always in a plain process."""
    return int(os.environ.get("RANK", "0")) == 0
