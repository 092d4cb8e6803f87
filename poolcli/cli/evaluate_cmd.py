"""poolcli evaluate: accuracy, loss and throughput of one or more models on a dataset."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from ..data.specs import make_loader, open_dataset
from ..evaluate.classification import METRIC_DEFINITIONS, evaluate_classifier
from ..runtime import resolve_device, seed_everything
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
    WeightsOpt,
    WorkersOpt,
    console,
    emit_json,
    environment,
    load_bundle,
    progress,
)


def evaluate_models(
    models: list[str],
    data: str,
    *,
    weights=None,
    device: str = "auto",
    batch_size: int = 128,
    workers: int = 0,
    seed: int = 0,
    classes: str | None = None,
    limit: int | None = None,
    max_per_class: int | None = None,
    bad_images: str = "error",
) -> dict[str, Any]:
    """Evaluate each model on ``data`` (preprocessed to each model's own input size and normalisation)."""
    seed_everything(seed)
    dev = resolve_device(device)
    results = []
    for spec in models:
        bundle = load_bundle(spec, weights)
        ds = open_dataset(
            data,
            input_size=bundle.input_size,
            mean=bundle.mean,
            std=bundle.std,
            default_split="test",
            classes=classes,
            limit=limit,
            max_per_class=max_per_class,
            seed=seed,
            bad_images=bad_images,
        )
        with progress(f"evaluate {spec}", len(ds)) as advance:
            metrics = evaluate_classifier(bundle.module, make_loader(ds, batch_size, workers), dev, advance)
        results.append({"model": spec, "dataset": getattr(ds, "description", data), **metrics})
    return {
        "schema": "poolcli.evaluate/1",
        "data": data,
        "device": str(dev),
        "batch_size": batch_size,
        "seed": seed,
        "selection": {"classes": classes, "limit": limit, "max_per_class": max_per_class},
        "definitions": METRIC_DEFINITIONS,
        "results": results,
        "environment": environment(),
    }


@app.command("evaluate")
def evaluate_cmd(
    models: Annotated[
        list[str], typer.Argument(help="One or more models (checkpoint, timm:NAME, tv:NAME, poolcli:NAME).")
    ],
    data: DataOpt = "digits:test",
    weights: WeightsOpt = None,
    device: DeviceOpt = "auto",
    batch_size: BatchOpt = 128,
    workers: WorkersOpt = 0,
    seed: SeedOpt = 0,
    classes: ClassesOpt = None,
    limit: LimitOpt = None,
    max_per_class: MaxPerClassOpt = None,
    bad_images: BadImagesOpt = "error",
    json_out: JsonOpt = False,
) -> None:
    """Top-1/top-5 accuracy, loss and images/s of each model on a dataset.

    Example: poolcli evaluate fixtures/digits-cnn.safetensors fixtures/digits-resnet.safetensors
    --data digits:test --json
    """
    doc = evaluate_models(
        models,
        data,
        weights=weights,
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
        for col in ("model", "images", "top-1", "top-5", "loss", "images/s"):
            table.add_column(col, justify="left" if col == "model" else "right")
        for r in doc["results"]:
            table.add_row(
                r["model"],
                str(r["n"]),
                f"{100 * r['top1']:.2f}%",
                f"{100 * r['top5']:.2f}%",
                f"{r['loss']:.4f}",
                f"{r['images_per_s']:.0f}",
            )
        console().print(table)
    if json_out:
        emit_json(doc)
