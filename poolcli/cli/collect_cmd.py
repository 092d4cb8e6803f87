"""poolcli collect / poolcli stats merge: streaming scatter statistics at a site."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from ..data.specs import open_dataset
from ..errors import BadInputError
from ..io.atomic import check_output, output_lock
from ..pipeline.collect import collect_stats, merge_stats, save_stats
from ..runtime import resolve_device, seed_everything
from .app import app
from .common import (
    BadImagesOpt,
    BatchOpt,
    ClassesOpt,
    DataOpt,
    DeviceOpt,
    InputSizeOpt,
    JsonOpt,
    LimitOpt,
    ModelArg,
    SeedOpt,
    WeightsOpt,
    WorkersOpt,
    emit_json,
    info,
    load_bundle,
    progress,
    warn,
)

SiteOpt = Annotated[str, typer.Option("--site", "-s", help="Site: an alias (@down3, @global) or a module path.")]
AtOpt = Annotated[
    str, typer.Option("--at", help="input (the site's input), output, or destrided (a strided conv run at stride 1).")
]
CapOpt = Annotated[int, typer.Option("--max-per-class", help="At most N images per class (paper: 10000).")]

stats_app = typer.Typer(help="Work with statistics files.", no_args_is_help=True)
app.add_typer(stats_app, name="stats")


def parse_shard(text: str | None) -> tuple[int, int]:
    if not text:
        return (0, 1)
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise BadInputError(f"bad --shard '{text}': write i/n, e.g. 0/4") from None
    if not (n >= 1 and 0 <= i < n):
        raise BadInputError(f"bad --shard '{text}': need 0 ≤ i < n")
    return i, n


def run_collect(
    model: str,
    data: str,
    site: str,
    *,
    weights=None,
    input_size=None,
    at: str = "input",
    classes=None,
    limit=None,
    max_per_class: int = 10000,
    device: str = "auto",
    batch_size: int = 64,
    workers: int = 0,
    seed: int = 0,
    shard: str | None = None,
    scale_images: int = 1024,
    checkpoint: Path | None = None,
    checkpoint_every: int = 0,
    bad_images: str = "error",
    output: Path | None = None,
):
    """Library entry used by `collect` and `fit-pooling`: returns (stats, metadata). ``output`` is checked
    (path and free space) before the pass."""
    seed_everything(seed)
    bundle = load_bundle(model, weights, input_size=input_size)
    ds = open_dataset(
        data,
        input_size=bundle.input_size,
        mean=bundle.mean,
        std=bundle.std,
        default_split="train",
        classes=classes,
        limit=limit,
        max_per_class=max_per_class,
        seed=seed,
        bad_images=bad_images,
    )
    if ds.skipped:
        warn(f"left out {len(ds.skipped)} unreadable image(s), e.g. {ds.skipped[0]}")
    desc = {
        "model": model,
        "data": data,
        "dataset": getattr(ds, "description", data),
        "max_per_class": max_per_class,
        "selection": {"classes": classes, "limit": limit},
        "seed": seed,
        "skipped_images": list(ds.skipped),
    }
    i, n = parse_shard(shard)
    with progress(f"collect {site}", len(ds) // n) as advance:
        return collect_stats(
            bundle,
            site,
            ds,
            at=at,
            device=resolve_device(device),
            batch_size=batch_size,
            workers=workers,
            shard=(i, n),
            scale_images=scale_images,
            checkpoint=checkpoint,
            checkpoint_every=checkpoint_every,
            description=desc,
            progress=advance,
            output=output,
        )


def stats_document(meta: dict[str, Any], stats) -> dict[str, Any]:
    return {"schema": "poolcli.collect/1", **meta, "class_counts": stats.counts.tolist()}


@app.command("collect")
def collect_cmd(
    model: ModelArg,
    site: SiteOpt,
    output: Annotated[Path, typer.Option("--output", "-o", help="Statistics file to write.")],
    data: DataOpt = "digits:train",
    weights: WeightsOpt = None,
    input_size: InputSizeOpt = None,
    at: AtOpt = "input",
    classes: ClassesOpt = None,
    limit: LimitOpt = None,
    max_per_class: CapOpt = 10000,
    device: DeviceOpt = "auto",
    batch_size: BatchOpt = 64,
    workers: WorkersOpt = 0,
    seed: SeedOpt = 0,
    shard: Annotated[
        Optional[str], typer.Option("--shard", help="Process shard i of n (i/n); merge with 'poolcli stats merge'.")
    ] = None,
    checkpoint_every: Annotated[
        int,
        typer.Option(
            "--checkpoint-every",
            help="Save partial sums to OUTPUT.partial every N batches; rerunning the same command continues "
            "where it stopped (bit-identical result).",
        ),
    ] = 0,
    bad_images: BadImagesOpt = "error",
    json_out: JsonOpt = False,
) -> None:
    """Stream a site's feature maps through a dataset into per-class sums and one weighted Gram (float64).

    Example: poolcli collect fixtures/digits-cnn.safetensors --site @down3 --data digits:train -o stats.safetensors
    """
    partial = output.with_name(output.name + ".partial")
    writer = int(os.environ.get("RANK", "0")) == 0  # under torchrun every rank holds the all-reduced sums; one writes
    if writer:
        check_output(output)
    with output_lock(output, "poolcli collect") if writer else contextlib.nullcontext():
        stats, meta = run_collect(
            model,
            data,
            site,
            weights=weights,
            input_size=input_size,
            at=at,
            classes=classes,
            limit=limit,
            max_per_class=max_per_class,
            device=device,
            batch_size=batch_size,
            workers=workers,
            seed=seed,
            shard=shard,
            checkpoint=partial if checkpoint_every else None,
            checkpoint_every=checkpoint_every,
            bad_images=bad_images,
            output=output if writer else None,
        )
        if writer:
            save_stats(output, stats, meta)
    rank = os.environ.get("RANK")
    (partial.with_name(f"{partial.name}.rank{rank}") if meta.get("world_size", 1) > 1 else partial).unlink(
        missing_ok=True
    )
    if writer:
        c, (h, w) = meta["channels"], meta["grid"]
        info(f"collected {meta['images']} images at {meta['site']} ({c}×{h}×{w}) → {output}")
        if json_out:
            emit_json(stats_document(meta, stats))


@stats_app.command("merge")
def merge_cmd(
    files: Annotated[list[Path], typer.Argument(help="Statistics files (shards) to add up.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Merged statistics file.")],
) -> None:
    """Add up shards of one collect run (they are sums, so the result equals a single run).

    Example: poolcli stats merge s0.safetensors s1.safetensors -o stats.safetensors
    """
    check_output(output)
    stats, meta = merge_stats(files)
    save_stats(output, stats, meta)
    missing = meta["shard_count"] - len(meta["shards"]) if isinstance(meta.get("shard_count"), int) else 0
    note = f" ({missing} of {meta['shard_count']} shards still missing)" if missing > 0 else ""
    info(f"merged {len(files)} files, {meta['images']} images → {output}{note}")
