"""poolcli convert: swap pooling at sites and write a checkpoint that rebuilds the new model."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from ..models.sites import format_macs
from .app import app
from .common import (
    STATE,
    JsonOpt,
    SeedOpt,
    console,
    emit_json,
    model_options,
)


class Recipe(str, enum.Enum):
    after = "after"
    first = "first"


@app.command("convert")
@model_options
def convert_cmd(
    model: Annotated[str, typer.Argument(help="Model to convert (checkpoint, timm:NAME, tv:NAME, poolcli:NAME).")],
    swap: Annotated[
        list[str],
        typer.Option(
            "--swap",
            metavar="SITE=OP",
            help="SITE=OP, repeatable: @down3=learned:pool.safetensors, "
            "@down1=ppool, @global=gem:p=3 (operators: see README).",
        ),
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="Checkpoint to write (.safetensors).")],
    recipe: Annotated[
        Recipe,
        typer.Option(
            "--recipe",
            help="How a @downK stage is rewritten: 'after' (each strided "
            "conv at stride 1, then the operator; BlurPool) or 'first' (the operator "
            "pools the stage's input, its convs run at stride 1; seed 002).",
        ),
    ] = Recipe.after,
    trainable: Annotated[bool, typer.Option("--trainable", help="Make learned pooling weights P trainable.")] = False,
    init_data: Annotated[
        Optional[str],
        typer.Option(
            "--init-data",
            help="Set GSP prototypes now from these images (else GSP is GAP until finetune has seen 1024).",
        ),
    ] = None,
    init_images: Annotated[int, typer.Option("--init-images", help="Images for --init-data.")] = 1024,
    seed: SeedOpt = 0,
    json_out: JsonOpt = False,
    model_opts: dict | None = None,
) -> None:
    """Swap the pooling at one or more sites and write a poolcli checkpoint.

    Pool sites are replaced; a strided conv is replaced by learned pooling fitted --at input, and otherwise
    runs at stride 1 followed by the new pooling (same output grid). Every swapped site must keep its
    output shape.

    Example: poolcli convert fixtures/digits-cnn.safetensors --swap @down3=learned:pool.safetensors
    -o learned.safetensors
    """
    from .. import api

    _, doc = api.convert(
        model,
        swap,
        output=output,
        trainable=trainable,
        seed=seed,
        recipe=recipe.value,
        init_data=init_data,
        init_images=init_images,
        **(model_opts or {}),
    )
    if not STATE["quiet"]:
        table = Table(title=f"convert {model} → {output} (recipe: {recipe.value})", title_justify="left")
        site_width = max((len(r["site"]) + len(r["alias"] or "") + 3 for r in doc["swaps"]), default=10)
        table.add_column("site", no_wrap=True, min_width=site_width)  # a path the user copies: never broken
        for col in ("kind", "was", "now", "mode", "output", "params was → now"):
            table.add_column(col, no_wrap=col in ("kind", "mode"), overflow="fold")
        for r in doc["swaps"]:
            site = f"{r['alias']} ({r['site']})" if r["alias"] else r["site"]
            table.add_row(
                site,
                r["kind"],
                r["old"],
                r["new"],
                r["mode"],
                "×".join(map(str, r["shape"])),
                f"{r['params_before']:,} → {r['params_after']:,}",
            )
        con = console()
        con.print(table)
        for note in dict.fromkeys(f"{r['site']}: {r['note']}" for r in doc["swaps"] if r.get("note")):
            con.print(f"note: {note}", markup=False, highlight=False)
        m, p = doc["macs"], doc["params"]
        con.print(
            f"model: {format_macs(m['before'])} → {format_macs(m['after'])} MACs per image, "
            f"{p['before'] / 1e6:.2f}M → {p['after'] / 1e6:.2f}M parameters"
        )
    if json_out:
        emit_json(doc)
