"""poolcli fit-pooling: closed-form learned pooling from statistics (collected on the fly or from --stats)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Optional

import typer
from rich.table import Table

from ..errors import BadInputError
from ..io.atomic import check_suffix
from ..pipeline.collect import load_stats
from ..pipeline.fitting import check_fit_options, check_fit_outputs, parse_alphas
from .app import app
from .collect_cmd import AtOpt, CapOpt
from .common import (
    STATE,
    BadImagesOpt,
    BatchOpt,
    ClassesOpt,
    DataOpt,
    DeviceOpt,
    JsonOpt,
    LimitOpt,
    MaxMemoryOpt,
    PrecisionOpt,
    SeedOpt,
    WorkersOpt,
    console,
    emit_json,
    info,
    model_options,
)


def _plan_before_collect(bundle, site, at, k, stride, solver, max_memory, device) -> None:
    """Refuse a fit that cannot fit in memory before the (long) statistics pass: the site's grid and
    channels from one forward pass."""
    from .. import api

    report = api.inspect(bundle)
    chosen = report.resolve(site, bundle.module)
    shape = chosen.out_shape if at == "output" else chosen.in_shape
    if shape and len(shape) == 3:
        meta = {"grid": list(shape[1:]), "channels": shape[0], "classes": ["?"]}  # D (rank Q·C) checked after
        api.fit_plan(meta, k=k, stride=stride, solver=solver, max_memory=max_memory, device=device)


@app.command("fit-pooling")
@model_options
def fit_cmd(
    model: Annotated[
        Optional[str], typer.Argument(help="Model (collects statistics first); omit with --stats.")
    ] = None,
    stats_file: Annotated[
        Optional[Path], typer.Option("--stats", help="Statistics file from 'poolcli collect'.")
    ] = None,
    site: Annotated[Optional[str], typer.Option("--site", "-s", help="Site alias or module path (with MODEL).")] = None,
    data: DataOpt = "digits:train",
    at: AtOpt = "input",
    classes: ClassesOpt = None,
    limit: LimitOpt = None,
    max_per_class: CapOpt = 10000,
    alpha: Annotated[str, typer.Option("--alpha", help="Locality weight α, or a list to sweep (1,5,25).")] = "25",
    norm: Annotated[Literal["l1", "l2"], typer.Option("--norm", help="Normalisation of each pooling map.")] = "l2",
    eigvecs: Annotated[
        int, typer.Option("--eigvecs", "-k", help="Pooling maps per location (2 doubles channels like a strided conv).")
    ] = 2,
    stride: Annotated[int, typer.Option("--stride", help="Output grid = input grid / stride.")] = 2,
    solver: Annotated[
        Literal["auto", "exact", "lobpcg"],
        typer.Option("--solver", help="exact: LAPACK per location; lobpcg: all locations at once."),
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
    precision: PrecisionOpt = "mixed",
    max_memory: MaxMemoryOpt = None,
    json_out: JsonOpt = False,
    model_opts: dict | None = None,
) -> None:
    """Fit spatially varying linear pooling in closed form: top generalized eigenvectors of (A, B + αC_m).

    Example: poolcli fit-pooling fixtures/digits-cnn.safetensors --site @down3 --alpha 25 -o pool.safetensors
    --plot maps.png
    """
    from .. import api

    alphas = parse_alphas(alpha)
    check_fit_options(norm, solver, eigvecs, stride)
    check_fit_outputs(output, plot, alphas)
    if output is not None:
        check_suffix(output, "pooling files")
    if (model is None) == (stats_file is None):
        raise BadInputError("give either a MODEL (with --site) or --stats FILE")
    if stats_file is not None:
        if any(v not in (None, False) for v in (model_opts or {}).values()):
            raise BadInputError("model options (--weights, --input-size, ...) apply to a MODEL, not to --stats")
        stats, meta = load_stats(stats_file)
    else:
        if site is None:
            raise BadInputError("fitting from a model needs --site (e.g. --site @down3)")
        bundle = api.load_model(model, **(model_opts or {}))  # loaded once: for the plan and the pass
        _plan_before_collect(bundle, site, at, eigvecs, stride, solver, max_memory, device)
        stats, meta = api.collect(
            bundle,
            site,
            data,
            at=at,
            classes=classes,
            limit=limit,
            max_per_class=max_per_class,
            device=device,
            batch_size=batch_size,
            workers=workers,
            seed=seed,
            bad_images=bad_images,
            precision=precision,
            max_memory=max_memory,
        )
    doc = api.fit(
        stats,
        meta,
        alphas=alphas,
        k=eigvecs,
        norm=norm,
        stride=stride,
        solver=solver,
        output=output,
        plot=plot,
        max_memory=max_memory,
        on_plan=lambda plan: info(plan.describe()),
        device=device,
    )
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
