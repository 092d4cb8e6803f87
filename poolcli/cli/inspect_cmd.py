"""poolcli inspect: list the pooling and downsampling sites of a model."""

from __future__ import annotations

from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from ..models.sites import SiteReport, discover_sites, format_macs
from .app import app
from .common import (
    STATE,
    JsonOpt,
    ModelArg,
    console,
    emit_json,
    model_options,
)


def _shape(s: list[int]) -> str:
    return "×".join(map(str, s)) if s else "-"


def render_sites(report: SiteReport, title: str) -> Table:
    table = Table(title=title, title_justify="left")
    longest = max((len(s.path) for s in report.sites), default=4)
    for col in ("#", "alias", "site", "kind", "op", "k/s", "input → output", "MACs", "share", "role"):
        if col == "site":  # the path a user copies into --site: never folded or cut, other columns give way
            table.add_column(col, no_wrap=True, min_width=longest)
            continue
        if col in ("alias", "kind", "k/s"):  # also copied (@down3) or short words: not folded
            table.add_column(col, no_wrap=True)
            continue
        table.add_column(col, justify="right" if col in ("#", "MACs", "share") else "left", overflow="fold")
    for s in report.sites:
        ks = f"{'x'.join(map(str, s.kernel))}/{'x'.join(map(str, s.stride))}" if s.kernel and s.stride else "-"
        role = (
            s.role
            + (f", {s.calls} calls" if s.calls > 1 else "")
            + {"fx": ", swap via FX", "none": ", not swappable (untraceable)"}.get(s.swappable_by, "")
        )
        share = f"{100 * s.macs / report.total_macs:.2f}%" if report.total_macs else "-"
        style = "dim" if s.role in ("internal-global", "shape-preserving") else None
        table.add_row(
            str(s.order),
            s.alias or "",
            s.path,
            s.kind,
            s.op,
            ks,
            f"{_shape(s.in_shape)} → {_shape(s.out_shape)}",
            format_macs(s.macs),
            share,
            role,
            style=style,
        )
    return table


def inspect_document(spec: str, bundle: Any, report: SiteReport) -> dict[str, Any]:
    from .. import api

    return {
        "schema": "poolcli.inspect/1",
        "model": spec,
        "base": bundle.base,
        "swaps": bundle.swaps,
        "num_classes": bundle.num_classes,
        "mean": list(bundle.mean),
        "std": list(bundle.std),
        "weights": bundle.weights,
        "preprocess": bundle.transform.describe(),
        "params": sum(p.numel() for p in bundle.module.parameters()),
        "macs_definition": "multiply-accumulates of one image's forward pass (conv, linear, pooling taps)",
        **report.to_dict(),
        "environment": api.environment(),
    }


@app.command("inspect")
@model_options
def inspect_cmd(
    model: ModelArg,
    site: Annotated[
        Optional[str],
        typer.Option("--site", metavar="SITE", help="Show only this site (alias like @down3, or a module path)."),
    ] = None,
    json_out: JsonOpt = False,
    model_opts: dict | None = None,
) -> None:
    """List pooling/downsampling sites: path, kind, kernel/stride, shapes, cost, aliases (@global, @downK).

    Example: poolcli inspect tv:resnet18 --json | jq '.aliases'
    """
    from .. import api

    bundle = api.load_model(model, **(model_opts or {}))
    report = discover_sites(bundle.module, bundle.input_size)
    if site is not None:
        chosen = report.resolve(site, bundle.module)
        report.sites = [s for s in report.sites if s.path == chosen.path] or [chosen]
    if not STATE["quiet"]:
        con = console()
        params = sum(p.numel() for p in bundle.module.parameters())
        con.print(render_sites(report, f"{model}  input {_shape(list(bundle.input_size))}"))
        con.print(
            f"total {format_macs(report.total_macs)} MACs per image, {params / 1e6:.2f}M parameters; "
            + "stages: "
            + ", ".join(f"{k}={len(v)} site(s)" for k, v in report.stages.items())
        )
        if report.unused_pools:
            con.print(f"defined but never called: {', '.join(report.unused_pools)}")
    if json_out:
        emit_json(inspect_document(model, bundle, report))
