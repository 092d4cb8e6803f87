"""Tiny timing helpers for the benchmark scripts (not tests)."""

from __future__ import annotations

import platform
import time
import weakref
from collections.abc import Callable

import torch


def machine() -> str:
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def best_time(fn: Callable[[], object], repeat: int = 5, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def saved_bytes(
    forward: Callable[[], torch.Tensor], exclude: tuple[torch.Tensor, ...] = ()
) -> tuple[int, torch.Tensor]:
    """Bytes the autograd graph of ``forward()`` keeps alive for backward, counted once per storage.

    Storages of ``exclude`` (the inputs and parameters the caller holds anyway) are not counted, nor is
    the output: what remains is the extra memory a layer costs between its forward and its backward.
    Returns (bytes, output) so the caller can run the backward.
    """
    packed: list[weakref.ref] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        packed.append(weakref.ref(t))  # the graph holds t itself: alive here iff the graph kept it
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = forward()
    skip = {t.untyped_storage().data_ptr() for t in (*exclude, out)}
    storages = {st.data_ptr(): st.nbytes() for st in (r().untyped_storage() for r in packed if r() is not None)}
    return sum(n for ptr, n in storages.items() if ptr not in skip), out
