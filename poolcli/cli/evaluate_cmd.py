"""poolcli evaluate: accuracy, loss and throughput of one or more models on a dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from .app import app
from .common import (
    STATE,
    BadImagesOpt,
    BatchOpt,
    ClassesOpt,
    DataOpt,
    DeviceOpt,
    JsonOpt,
    LimitOpt,
    MaxPerClassOpt,
    SeedOpt,
    WorkersOpt,
    console,
    emit_json,
    model_options,
)


@app.command("evaluate")
@model_options
def evaluate_cmd(
    models: Annotated[
        list[str],
        typer.Argument(metavar="MODEL...", help="One or more models (checkpoint, timm:NAME, tv:NAME, poolcli:NAME)."),
    ],
    data: DataOpt = "digits:test",
    weights: Annotated[
        Optional[list[Path]],
        typer.Option(
            "--weights",
            metavar="FILE",
            help="Weights file for each model, in order (repeat it once per model).",
        ),
    ] = None,
    device: DeviceOpt = "auto",
    batch_size: BatchOpt = 128,
    workers: WorkersOpt = 0,
    seed: SeedOpt = 0,
    classes: ClassesOpt = None,
    limit: LimitOpt = None,
    max_per_class: MaxPerClassOpt = None,
    bad_images: BadImagesOpt = "error",
    allow_class_mismatch: Annotated[
        bool,
        typer.Option(
            "--allow-class-mismatch", help="Evaluate a checkpoint on data whose class names differ from its own."
        ),
    ] = False,
    json_out: JsonOpt = False,
    model_opts: dict | None = None,
) -> None:
    """Top-1/top-5 accuracy, loss and images/s of each model on a dataset.

    Example: poolcli evaluate fixtures/digits-cnn.safetensors fixtures/digits-resnet.safetensors
    --data digits:test --json
    """
    from .. import api

    doc = api.evaluate(
        models,
        data,
        weights=weights,
        allow_class_mismatch=allow_class_mismatch,
        **(model_opts or {}),
        device=device,
        batch_size=batch_size,
        workers=workers,
        seed=seed,
        classes=classes,
        limit=limit,
        max_per_class=max_per_class,
        bad_images=bad_images,
    )
    if not STATE["quiet"]:
        table = Table(title=f"evaluate on {data} ({doc['device']})", title_justify="left")
        for col in ("model", "weights", "images", "top-1", "top-5", "loss", "images/s"):
            table.add_column(col, justify="left" if col in ("model", "weights") else "right", no_wrap=col == "model")
        for r in doc["results"]:
            table.add_row(
                r["model"],
                r["weights"].split(":", 1)[0],
                str(r["n"]),
                f"{100 * r['top1']:.2f}%",
                f"{100 * r['top5']:.2f}%" if "top5" in r else "-",
                f"{r['loss']:.4f}",
                f"{r['images_per_s']:.0f}",
            )
        con = console()
        con.print(table)
        for r in doc["results"]:
            for note in r["notes"]:
                con.print(f"note: {note}")
    if json_out:
        emit_json(doc)
