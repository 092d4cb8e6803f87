"""Fitting learned pooling from statistics: option checks, the α sweep, the files and the report."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch

from ..errors import BadInputError
from ..io.atomic import check_distinct, check_output
from ..io.tensorfile import check_finite
from ..learn.pooling import fit_pooling, needs_ridge, solver_for
from ..text import quote
from .poolfile import plot_maps, save_pooling

NORMS = ("l1", "l2")
SOLVERS = ("auto", "exact", "lobpcg")


def check_fit_options(norm: str, solver: str, k: int, stride: int) -> None:
    if norm not in NORMS:
        raise BadInputError(f"bad --norm {quote(norm)}: use l1 or l2")
    if solver not in SOLVERS:
        raise BadInputError(f"bad --solver {quote(solver)}: use auto, exact or lobpcg")
    if k < 1:
        raise BadInputError("--eigvecs must be ≥ 1")
    if stride < 1:
        raise BadInputError(f"--stride must be ≥ 1, got {stride}")


def parse_alphas(text: str) -> list[float]:
    """``--alpha 1,5,25`` → [1.0, 5.0, 25.0] (checked)."""
    try:
        vals = [float(v) for v in text.split(",")]
    except ValueError:  # also an empty item: '1,,2' or a trailing comma
        vals = []
    return check_alphas(vals, text)


def check_alphas(vals: list[float], shown: str | None = None) -> list[float]:
    shown = quote(shown if shown is not None else ",".join(f"{v:g}" for v in vals))
    if not vals or any(not (math.isfinite(v) and v >= 0) for v in vals):
        raise BadInputError(f"bad --alpha {shown}: give one finite value ≥ 0 or a list like 1,5,25")
    if len({f"{v:g}" for v in vals}) != len(vals):
        raise BadInputError(f"bad --alpha {shown}: a value is given twice (each α writes its own file)")
    return vals


def check_fit_outputs(output: Path | None, plot: Path | None, alphas: list[float]) -> None:
    """Every file the fit will write is checked before any work starts."""
    many = len(alphas) > 1
    for option, base in (("-o", output), ("--plot", plot)):
        for a in alphas:
            if base is not None:
                check_output(output_for(base, a, many), option)
    if plot is not None:
        from matplotlib.backend_bases import FigureCanvasBase

        kinds = FigureCanvasBase.get_supported_filetypes()
        if plot.suffix.lstrip(".").lower() not in kinds:
            raise BadInputError(
                f"--plot {quote(plot)}: unknown picture type {quote(plot.suffix)}; end the name in .png, .pdf or .svg"
            )
    check_distinct(
        *[(opt, output_for(b, a, many)) for opt, b in (("-o", output), ("--plot", plot)) if b for a in alphas]
    )


def output_for(base: Path | None, alpha: float, many: bool) -> Path | None:
    if base is None or not many:
        return base
    return base.with_name(f"{base.stem}-alpha{alpha:g}{base.suffix}")


def run_fit(
    stats,
    meta: dict[str, Any],
    alphas: list[float],
    *,
    k: int,
    norm: str,
    stride: int,
    solver: str,
    output: Path | None,
    plot: Path | None,
    max_memory: int | None = None,
    on_plan: Any = None,
    device: Any = None,
) -> dict[str, Any]:
    check_fit_options(norm, solver, k, stride)
    present = stats.present_classes()
    if int((stats.counts[present] < 2).sum()):
        raise BadInputError(
            "a class has fewer than 2 images; the within-class scatter is undefined (drop it with --classes)"
        )
    if present.numel() < 2:
        raise BadInputError(
            "the statistics hold only one class; the between-class scatter needs ≥ 2 classes: collect over more classes"
        )
    grid = tuple(meta["grid"])
    if stride > min(grid):
        raise BadInputError(
            f"--stride {stride} is larger than the {grid[0]}×{grid[1]} grid at {meta['site']}; use 1 to {min(grid)}"
        )
    if k > grid[0] * grid[1]:
        raise BadInputError(
            f"--eigvecs {k} exceeds the {grid[0] * grid[1]} input locations of the site; use at most "
            f"{grid[0] * grid[1]}"
        )
    plan = plan_for(grid, stats.channel_scale.numel(), int(present.numel()), k, stride, solver, max_memory, device)
    if on_plan is not None:
        on_plan(plan)  # said before the long work
    try:
        D, B = stats.scatter()
    except ValueError as e:
        raise BadInputError(str(e)) from None
    rank_bound = int((stats.counts[present] - 1).sum()) * stats.channel_scale.numel()  # rank B ≤ Σ (K_q − 1)·C
    scale = float(B.diagonal().mean())
    on = B if device is None or solver_for(solver, B.shape[0]) == "exact" else B.to(device)
    ridge = needs_ridge(on, rank_bound) / scale if scale > 0 else None  # once for every α (0: fit_pooling refuses)
    solved = []
    for alpha in alphas:  # every fit first: a failing α leaves no file of the others behind
        t0 = time.perf_counter()
        try:
            fit = fit_pooling(
                D,
                on,  # B itself, or its one copy on the solve's device
                grid,
                stride=stride,
                alpha=alpha,
                k=k,
                norm=norm,
                solver=solver,
                max_memory=max_memory,
                ridge=ridge,
                held=held_bytes(grid[0] * grid[1], int(present.numel()) * stats.channel_scale.numel()),
                device=on.device,
            )
        except ValueError as e:
            raise BadInputError(str(e)) from None
        check_finite(
            {"P": fit.P, "eigenvalues": fit.eigenvalues},
            f"the pooling fit at α={alpha:g}",
            "the statistics may be degenerate; collect more images or raise --alpha",
        )
        solved.append((alpha, fit, time.perf_counter() - t0))
    fits = []
    for alpha, fit, seconds in solved:
        path = output_for(output, alpha, len(alphas) > 1)
        if path is not None:
            info_meta = {
                "site": meta["site"],
                "at": meta.get("at", "input"),
                "model": meta.get("model"),
                "data": meta.get("data"),
                "stride": stride,
            }
            save_pooling(path, fit, stats.channel_mean, stats.channel_scale, info_meta)
        if plot is not None:
            title = f"{meta.get('model', '')} {meta['site']}  α={alpha:g} {norm}"
            plot_maps(output_for(plot, alpha, len(alphas) > 1), fit, title)
        per_location = {
            "separability": fit.ratio.tolist(),
            "separability_avgpool": fit.avg_ratio.tolist(),
            "eigenvalues": fit.eigenvalues.tolist(),
        }
        fits.append(
            {**fit.summary(), "seconds": seconds, "file": str(path) if path else None, "per_location": per_location}
        )
    return {
        "schema": "poolcli.fit-pooling/1",
        "site": meta["site"],
        "model": meta.get("model"),
        "weights": meta.get("weights"),
        "preprocess": meta.get("preprocess"),
        "data": meta.get("data"),
        "grid": list(grid),
        "channels": meta["channels"],
        "images": meta.get("images"),
        "ridge_note": "a ridge > 0 was added to B because it was singular" if any(f["ridge"] for f in fits) else None,
        "definitions": {
            "separability": "pᵀAp / pᵀBp of the top pooling map p at each output location (A, B: between/within-"
            "class scatter of the channel-scaled maps, seed 001 eq. 10-13)",
            "separability_avgpool": "the same ratio for average pooling over each output cell's stride×stride window",
            "separability_gain": "mean over locations of separability / separability_avgpool (locations "
            "where either is undefined are left out and counted in cells_undefined; "
            "their per-location values are null)",
            "eigengap_rel": "(λ1 − λ2) / λ1 per location",
        },
        "fits": fits,
        "memory_plan": plan.describe(),
    }


def plan_for(
    grid: tuple[int, int],
    channels: int,
    classes: int,
    k: int,
    stride: int,
    solver: str,
    max_memory: int | None,
    device: Any = None,
):
    """The memory plan of a fit at a site (:func:`poolcli.learn.memory.plan_fit`), before any work."""
    from ..learn.eigen import output_grid
    from ..learn.memory import plan_fit

    n = grid[0] * grid[1]
    out = output_grid(tuple(grid), stride)
    method = solver_for(solver, n)
    gpu = device is not None and method == "lobpcg" and torch.device(device).type == "cuda"
    held = 0 if gpu else held_bytes(n, classes * channels)  # the statistics stay in host memory
    return plan_fit(n, out[0] * out[1], k, classes * channels, method, max_memory, held, device if gpu else None)


def held_bytes(n: int, rank: int) -> int:
    """What ``fit-pooling`` keeps alive beside the solve: the statistics' float64 Gram and class sums."""
    return 8 * (n * n + n * rank)
