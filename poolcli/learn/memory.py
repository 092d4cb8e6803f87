"""Memory planning for the pooling fit: what a fit at a site needs, and how many output cells LOBPCG may
solve at once within a budget.

The model counts float64 arrays: B (N×N, used in place), A's factor D (N×r), the fitted vectors of all M
cells (M×N×k) and the float32 pooling maps written out (k×M×N), the post-fit separability products (two
M×N), and per cell in a LOBPCG chunk about 40 blocks of N×(k+1): 22 live ones (X, G·X, A·X, the search
space S, G·S, A·S of three blocks each, the residual, the implicit P, the new Ritz block) and measured
temporaries, plus its penalty, preconditioner and start rows. The exact LAPACK path (small N) holds A dense
and one N×N matrix per cell at a time. ``held``: bytes the caller keeps alive beside the fit (``fit-pooling``:
the statistics' Gram and class sums). Before the solve, deciding whether B needs a ridge may take one
N×N copy (a Cholesky factorisation); that phase's peak counts too.
"""

from __future__ import annotations

import dataclasses
import os
import re

from ..errors import BadInputError

F64 = 8
LOBPCG_BLOCKS = 40  # N×(k+1) float64 blocks per output cell in one LOBPCG chunk (measured: 22 live + temporaries)


def available_memory() -> int:
    """Bytes the OS says are available now (``MemAvailable``), else the physical memory."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def default_budget(device=None) -> int:
    """Three quarters of the available memory: the host's, or the free memory of a CUDA ``device``."""
    if device is not None and getattr(device, "type", str(device)) == "cuda":
        import torch

        return int(0.75 * torch.cuda.mem_get_info(device)[0])
    return int(0.75 * available_memory())


def parse_size(text: str) -> int:
    """``8G``, ``512M``, ``1.5GiB``, ``2000000000`` → bytes."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kKmMgGtT]?)(i?[bB])?\s*", str(text))
    if not m:
        raise BadInputError(f"bad --max-memory {text!r}: give a size such as 8G, 512M or 1.5GiB")
    scale = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}[m.group(2).lower()]
    value = int(float(m.group(1)) * scale)
    if value <= 0:
        raise BadInputError(f"bad --max-memory {text!r}: give a positive size")
    return value


@dataclasses.dataclass
class FitPlan:
    n: int  # input locations
    m: int  # output cells
    k: int  # maps per cell
    solver: str  # exact | lobpcg
    chunk: int  # cells per LOBPCG chunk (M for exact)
    fixed_bytes: int  # what does not depend on the chunk
    peak_bytes: int  # fixed + the chunk's working set
    budget: int

    def describe(self) -> str:
        how = "LAPACK per location" if self.solver == "exact" else f"LOBPCG in chunks of {self.chunk} locations"
        return (
            f"N={self.n} input × M={self.m} output locations, k={self.k}: {how}, peak ≈ {gib(self.peak_bytes)} "
            f"(budget {gib(self.budget)})"
        )


def gib(b: int) -> str:
    return f"{b / 2**30:.2f} GiB" if b >= 2**28 else f"{b / 2**20:.0f} MiB"


def plan_fit(
    n: int, m: int, k: int, rank: int, solver: str, budget: int | None = None, held: int = 0, device=None
) -> FitPlan:
    """The solver's chunk for a budget; refuses (one line, with the options that help) when even one cell
    does not fit."""
    budget = default_budget(device) if budget is None else int(budget)
    nb = min(k + 1, n)
    fixed = F64 * (n * n + n * rank + m * n * k + 2 * m * n) + 4 * k * m * n + held
    if solver == "exact":
        peak = fixed + F64 * (2 * n * n + 4 * n * nb)  # A dense and one G_m in LAPACK
        chunk = m
    else:
        per_cell = F64 * n * (LOBPCG_BLOCKS * nb + 10)
        room = budget - fixed
        chunk = max(0, min(m, room // per_cell))
        peak = fixed + max(1, chunk) * per_cell
    peak = max(peak, fixed + F64 * n * n)  # the ridge check's factorisation
    plan = FitPlan(n, m, k, solver, int(chunk), int(fixed), int(peak), budget)
    if peak > budget or chunk < 1:
        raise BadInputError(
            f"the fit needs about {gib(max(peak, fixed + F64 * n * (LOBPCG_BLOCKS * nb + 10)))} "
            f"({plan.describe().split(': ')[0]}) but the memory budget is {gib(budget)}; fit a later (smaller) "
            "site, raise --stride or lower --eigvecs (fewer output maps), or raise --max-memory if the machine "
            "has more"
        )
    return plan


def collect_bytes(n: int, channels: int, classes: int, batch: int, cache: int = 0) -> int:
    """What collecting statistics at a site holds: the float64 Gram (N×N), class sums and centre
    ((Q+1)·N·C), a batch's maps in float32 and float64 (the moments pass), the centred float32 batch, one
    strip of the Gram update, and the moments pass's cache of maps (``cache`` bytes at most)."""
    per_batch = batch * channels * n * (4 + 8 + 4)
    return F64 * (n * n + (classes + 1) * n * channels) + per_batch + 128 * n * (4 + 8) + cache


def check_collect(n: int, channels: int, classes: int, batch: int, cache: int, budget: int | None) -> int:
    """Refuse (one line, with the options that help) statistics that cannot fit the memory budget."""
    budget = default_budget() if budget is None else int(budget)
    need = collect_bytes(n, channels, classes, batch, min(cache, budget // 4))
    if need > budget:
        raise BadInputError(
            f"the statistics at this site need about {gib(need)} (N={n} locations: a {gib(F64 * n * n)} float64 "
            f"Gram) but the memory budget is {gib(budget)}; choose a later (smaller) site, a smaller --input-size "
            "or --batch-size, or raise --max-memory if the machine has more"
        )
    return need
