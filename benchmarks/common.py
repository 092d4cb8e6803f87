"""Tiny timing helpers for the benchmark scripts (not tests)."""
from __future__ import annotations

import platform
import time
import tracemalloc
from typing import Callable

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


def peak_cpu_bytes(fn: Callable[[], object]) -> int:
    """Peak bytes allocated by torch on the CPU during fn (via the profiler's memory accounting)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = prof.events()
    cur = peak = 0
    for e in sorted(events, key=lambda e: e.time_range.start):
        cur += e.cpu_memory_usage
        peak = max(peak, cur)
    return peak
