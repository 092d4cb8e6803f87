"""poolcli collect / poolcli stats merge: streaming scatter statistics at a site."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import typer

from ..errors import BadInputError
from ..io.atomic import check_output, check_suffix
from ..pipeline.collect import merge_stats, save_stats
from ..runtime import main_process
from .app import app
from .common import (
    BadImagesOpt,
    BatchOpt,
    ClassesOpt,
    DataOpt,
    DeviceOpt,
    JsonOpt,
    LimitOpt,
    MaxMemoryOpt,
    ModelArg,
    PrecisionOpt,
    SeedOpt,
    WorkersOpt,
    emit_json,
    info,
    model_options,
)

SiteOpt = Annotated[
    str, typer.Option("--site", "-s", metavar="SITE", help="Site: an alias (@down3, @global) or a module path.")
]
AtOpt = Annotated[
    Literal["input", "output", "destrided"],
    typer.Option("--at", help="input (the site's input), output, or destrided (a strided conv run at stride 1)."),
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


def stats_document(meta: dict[str, Any], stats) -> dict[str, Any]:
    return {"schema": "poolcli.collect/1", **meta, "class_counts": stats.counts.tolist()}


@app.command("collect")
@model_options
def collect_cmd(
    model: ModelArg,
    site: SiteOpt,
    output: Annotated[Path, typer.Option("--output", "-o", metavar="FILE", help="Statistics file to write.")],
    data: DataOpt = "digits:train",
    at: AtOpt = "input",
    classes: ClassesOpt = None,
    limit: LimitOpt = None,
    max_per_class: CapOpt = 10000,
    device: DeviceOpt = "auto",
    batch_size: BatchOpt = 64,
    workers: WorkersOpt = 0,
    seed: SeedOpt = 0,
    shard: Annotated[
        Optional[str],
        typer.Option("--shard", metavar="I/N", help="Process shard i of n; merge with 'poolcli stats merge'."),
    ] = None,
    checkpoint_every: Annotated[
        int,
        typer.Option(
            "--checkpoint-every",
            metavar="N",
            help="Save partial sums to OUTPUT.partial every N batches; rerunning the same command continues "
            "where it stopped (bit-identical result).",
        ),
    ] = 0,
    bad_images: BadImagesOpt = "error",
    precision: PrecisionOpt = "mixed",
    max_memory: MaxMemoryOpt = None,
    json_out: JsonOpt = False,
    model_opts: dict | None = None,
) -> None:
    """Stream a site's feature maps through a dataset into per-class sums and one weighted Gram (float64).

    Example: poolcli collect fixtures/digits-cnn.safetensors --site @down3 --data digits:train -o stats.safetensors
    """
    from .. import api

    check_output(output)
    check_suffix(output, "statistics files")
    partial = output.with_name(output.name + ".partial")
    writer = main_process()  # under torchrun every rank holds the all-reduced sums; one writes
    stats, meta = api.collect(
        model,
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
        shard=parse_shard(shard),
        checkpoint=partial if checkpoint_every else None,
        checkpoint_every=checkpoint_every,
        bad_images=bad_images,
        output=output if writer else None,
        precision=precision,
        max_memory=max_memory,
        **(model_opts or {}),
    )
    if writer:
        c, (h, w) = meta["channels"], meta["grid"]
        info(f"collected {meta['images']} images at {meta['site']} ({c}×{h}×{w}) → {output}")
        if json_out:
            emit_json(stats_document(meta, stats))


@stats_app.command("merge")
def merge_cmd(
    files: Annotated[list[Path], typer.Argument(metavar="FILE...", help="Statistics files (shards) to add up.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Merged statistics file.")],
) -> None:
    """Add up shards of one collect run (they are sums, so the result equals a single run).

    Example: poolcli stats merge s0.safetensors s1.safetensors -o stats.safetensors
    """
    check_suffix(output, "statistics files")
    check_output(output)
    stats, meta = merge_stats(files)
    save_stats(output, stats, meta)
    missing = meta["shard_count"] - len(meta["shards"]) if isinstance(meta.get("shard_count"), int) else 0
    note = f" ({missing} of {meta['shard_count']} shards still missing)" if missing > 0 else ""
    info(f"merged {len(files)} files, {meta['images']} images → {output}{note}")
