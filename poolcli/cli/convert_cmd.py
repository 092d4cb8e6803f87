"""poolcli convert: swap pooling at sites and write a checkpoint that rebuilds the new model."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from ..io.atomic import check_output
from ..models.checkpoint import save_checkpoint
from ..models.convert import convert, parse_swap
from ..models.sites import discover_sites, format_macs
from .app import app
from .common import (
    STATE,
    InChansOpt,
    InputSizeOpt,
    JsonOpt,
    NumClassesOpt,
    SeedOpt,
    WeightsOpt,
    console,
    emit_json,
    environment,
    load_bundle,
)


class Recipe(str, enum.Enum):
    after = "after"
    first = "first"


def run_convert(
    model: str,
    swaps: list[str],
    output: Path,
    *,
    weights=None,
    num_classes=None,
    in_chans=None,
    input_size=None,
    trainable: bool = False,
    seed: int = 0,
    recipe: str = "after",
    init_data: str | None = None,
    init_images: int = 1024,
) -> dict[str, Any]:
    check_output(output)
    bundle = load_bundle(model, weights, num_classes, in_chans, input_size)
    report = discover_sites(bundle.module, bundle.input_size)
    new, results = convert(
        bundle, [parse_swap(s) for s in swaps], trainable=trainable, report=report, seed=seed, recipe=recipe
    )
    initialised = None
    if init_data is not None:
        from ..pipeline.gspinit import init_gsp_prototypes

        initialised = init_gsp_prototypes(new, init_data, images=init_images, seed=seed)
        for r in results:
            if r.note.startswith("GSP is global average pooling"):
                r.note = f"GSP prototypes initialised from {initialised} images of {init_data}"
    after = discover_sites(new.module, new.input_size)
    save_checkpoint(new, None, output, verify=True)
    params = (sum(p.numel() for p in bundle.module.parameters()), sum(p.numel() for p in new.module.parameters()))
    return {
        "schema": "poolcli.convert/2",
        "model": model,
        "recipe": recipe,
        "gsp_init_images": initialised,
        "output": str(output),
        "swaps": [r.to_dict() for r in results],
        "manifest_swaps": new.swaps,
        "params": {"before": params[0], "after": params[1]},
        "macs": {"before": report.total_macs, "after": after.total_macs},
        "macs_definition": "multiply-accumulates of one image's forward pass (conv, linear, pooling taps)",
        "environment": environment(),
    }


@app.command("convert")
def convert_cmd(
    model: Annotated[str, typer.Argument(help="Model to convert (checkpoint, timm:NAME, tv:NAME, poolcli:NAME).")],
    swap: Annotated[
        list[str],
        typer.Option(
            "--swap",
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
    weights: WeightsOpt = None,
    num_classes: NumClassesOpt = None,
    in_chans: InChansOpt = None,
    input_size: InputSizeOpt = None,
    seed: SeedOpt = 0,
    json_out: JsonOpt = False,
) -> None:
    """Swap the pooling at one or more sites and write a poolcli checkpoint.

    Pool sites are replaced; a strided conv is replaced by learned pooling fitted --at input, and otherwise
    runs at stride 1 followed by the new pooling (same output grid). Every swapped site must keep its
    output shape.

    Example: poolcli convert fixtures/digits-cnn.safetensors --swap @down3=learned:pool.safetensors
    -o learned.safetensors
    """
    doc = run_convert(
        model,
        swap,
        output,
        weights=weights,
        num_classes=num_classes,
        in_chans=in_chans,
        input_size=input_size,
        trainable=trainable,
        seed=seed,
        recipe=recipe.value,
        init_data=init_data,
        init_images=init_images,
    )
    if not STATE["quiet"]:
        table = Table(title=f"convert {model} → {output} (recipe: {recipe.value})", title_justify="left")
        for col in ("site", "kind", "was", "now", "mode", "output", "params was → now"):
            table.add_column(col, overflow="fold")
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
