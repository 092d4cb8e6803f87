"""poolcli fit-pooling: closed-form learned pooling from statistics (collected on the fly or from --stats)."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from ..errors import BadInputError
from ..fit.pooling import fit_pooling
from ..io.atomic import check_distinct, check_output
from ..io.tensorfile import check_finite
from ..pipeline.collect import load_stats
from ..pipeline.poolfile import plot_maps, save_pooling
from ..text import quote
from .app import app
from .collect_cmd import AtOpt, CapOpt, run_collect
from .common import (
    STATE,
    BadImagesOpt,
    BatchOpt,
    ClassesOpt,
    DataOpt,
    DeviceOpt,
    JsonOpt,
    LimitOpt,
    SeedOpt,
    WeightsOpt,
    WorkersOpt,
    console,
    emit_json,
    environment,
    info,
)


def parse_alphas(text: str) -> list[float]:
    try:
        vals = [float(v) for v in text.split(",")]
    except ValueError:  # also an empty item: '1,,2' or a trailing comma
        vals = []
    if not vals or any(not (math.isfinite(v) and v >= 0) for v in vals):
        raise BadInputError(f"bad --alpha {quote(text)}: give one finite value ≥ 0 or a list like 1,5,25")
    if len({f"{v:g}" for v in vals}) != len(vals):
        raise BadInputError(f"bad --alpha {quote(text)}: a value is given twice (each α writes its own file)")
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
) -> dict[str, Any]:
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
    try:
        D, B = stats.scatter()
    except ValueError as e:
        raise BadInputError(str(e)) from None
    solved = []
    for alpha in alphas:  # every fit first: a failing α leaves no file of the others behind
        t0 = time.perf_counter()
        try:
            fit = fit_pooling(D, B, grid, stride=stride, alpha=alpha, k=k, norm=norm, solver=solver)
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
        "environment": environment(),
    }


@app.command("fit-pooling")
def fit_cmd(
    model: Annotated[
        Optional[str], typer.Argument(help="Model (collects statistics first); omit with --stats.")
    ] = None,
    stats_file: Annotated[
        Optional[Path], typer.Option("--stats", help="Statistics file from 'poolcli collect'.")
    ] = None,
    site: Annotated[Optional[str], typer.Option("--site", "-s", help="Site alias or module path (with MODEL).")] = None,
    data: DataOpt = "digits:train",
    weights: WeightsOpt = None,
    at: AtOpt = "input",
    classes: ClassesOpt = None,
    limit: LimitOpt = None,
    max_per_class: CapOpt = 10000,
    alpha: Annotated[str, typer.Option("--alpha", help="Locality weight α, or a list to sweep (1,5,25).")] = "25",
    norm: Annotated[str, typer.Option("--norm", help="l1 or l2 normalisation of each pooling map.")] = "l2",
    eigvecs: Annotated[
        int, typer.Option("--eigvecs", "-k", help="Pooling maps per location (2 doubles channels like a strided conv).")
    ] = 2,
    stride: Annotated[int, typer.Option("--stride", help="Output grid = input grid / stride.")] = 2,
    solver: Annotated[
        str, typer.Option("--solver", help="auto, exact (LAPACK per location) or lobpcg (all locations at once).")
    ] = "auto",
    output: Annotated[
        Optional[Path], typer.Option("--output", "-o", help="Pooling file to write (one per α when sweeping).")
    ] = None,
    plot: Annotated[
        Optional[Path], typer.Option("--plot", help="PNG of the pooling maps at 9 output locations.")
    ] = None,
    device: DeviceOpt = "auto",
    batch_size: BatchOpt = 64,
    workers: WorkersOpt = 0,
    seed: SeedOpt = 0,
    bad_images: BadImagesOpt = "error",
    json_out: JsonOpt = False,
) -> None:
    """Fit spatially varying linear pooling in closed form: top generalized eigenvectors of (A, B + αC_m).

    Example: poolcli fit-pooling fixtures/digits-cnn.safetensors --site @down3 --alpha 25 -o pool.safetensors
    --plot maps.png
    """
    alphas = parse_alphas(alpha)
    if norm not in ("l1", "l2"):
        raise BadInputError(f"bad --norm {quote(norm)}: use l1 or l2")
    if solver not in ("auto", "exact", "lobpcg"):
        raise BadInputError(f"bad --solver {quote(solver)}: use auto, exact or lobpcg")
    if eigvecs < 1:
        raise BadInputError("--eigvecs must be ≥ 1")
    if stride < 1:
        raise BadInputError(f"--stride must be ≥ 1, got {stride}")
    check_fit_outputs(output, plot, alphas)
    if (model is None) == (stats_file is None):
        raise BadInputError("give either a MODEL (with --site) or --stats FILE")
    if stats_file is not None:
        stats, meta = load_stats(stats_file)
    else:
        if site is None:
            raise BadInputError("fitting from a model needs --site (e.g. --site @down3)")
        stats, meta = run_collect(
            model,
            data,
            site,
            weights=weights,
            at=at,
            classes=classes,
            limit=limit,
            max_per_class=max_per_class,
            device=device,
            batch_size=batch_size,
            workers=workers,
            seed=seed,
            bad_images=bad_images,
        )
    doc = run_fit(stats, meta, alphas, k=eigvecs, norm=norm, stride=stride, solver=solver, output=output, plot=plot)
    if not STATE["quiet"]:
        table = Table(
            title=f"fit-pooling at {meta['site']} ({meta['channels']}×{meta['grid'][0]}×{meta['grid'][1]}, "
            f"{meta.get('images')} images)",
            title_justify="left",
        )
        for col in ("α", "norm", "grid", "separability", "avg-pool", "gain", "eigengap", "solver", "s", "file"):
            table.add_column(col, justify="left" if col in ("norm", "solver", "file", "grid") else "right")
        for f in doc["fits"]:
            table.add_row(
                f"{f['alpha']:g}",
                f["norm"],
                f"{f['in_grid'][0]}×{f['in_grid'][1]}→{f['out_grid'][0]}×{f['out_grid'][1]}",
                f"{f['separability_mean']:.4g}",
                f"{f['separability_avgpool_mean']:.4g}",
                f"{f['separability_gain']:.2f}×",
                f"{f['eigengap_rel_mean']:.3f}",
                f"{f['solver']}{'' if not f['iterations'] else ' (' + str(f['iterations']) + ' it)'}",
                f"{f['seconds']:.2f}",
                f["file"] or "-",
            )
        console().print(table)
        if doc["ridge_note"]:
            info(f"note: {doc['ridge_note']}")
        undefined = max((f.get("cells_undefined", 0) for f in doc["fits"]), default=0)
        if undefined:
            info(
                f"note: {undefined} output cell(s) see only constant input (zero within-class scatter, e.g. blank "
                "border): their separability is undefined and left out of the means"
            )
    if json_out:
        emit_json(doc)
