"""Shared CLI plumbing: option types, the stderr console, JSON to stdout, progress bars.

Everything here is presentation; the commands call library functions and hand results to these helpers.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.text import Text

from .. import __version__
from ..io.tensorfile import json_safe
from ..text import LINE_LIMIT, literal

STATE: dict[str, Any] = {"quiet": False, "debug": False}


class SafeConsole(Console):
    """A stderr console that shows every string literally: no rich markup (``x[/bogus]y`` and ``[bold]`` print
    as typed), control characters escaped, line breaks kept only between lines we write ourselves. Styling
    comes from :class:`rich.text.Text` objects, never from markup in strings."""

    def render_str(self, text: str, **kwargs: Any) -> Text:
        kwargs["markup"] = False
        lines = [literal(line, limit=LINE_LIMIT) for line in str(text).split("\n")]
        return super().render_str("\n".join(lines), **kwargs)


def console() -> Console:
    con = SafeConsole(stderr=True, no_color=bool(os.environ.get("NO_COLOR")), highlight=False, markup=False)
    if not con.is_terminal and "COLUMNS" not in os.environ:
        con.width = 160  # logs and CI: do not fold tables into 80 columns
    return con


def info(msg: str) -> None:
    if not STATE["quiet"]:
        console().print(msg, soft_wrap=True)


def warn(msg: str) -> None:
    console().print(Text.assemble(("warning:", "yellow"), " ", literal(msg)), soft_wrap=True)


def error_line(msg: str) -> None:
    """The one line a failure prints (``error: problem; fix``), literal and bounded."""
    console().print(Text.assemble(("error:", "red"), " ", literal(msg)), soft_wrap=True)


def emit_json(doc: dict[str, Any]) -> None:
    """One JSON document on stdout (nothing else is ever written there)."""
    sys.stdout.write(json.dumps(json_safe(doc), indent=2) + "\n")
    sys.stdout.flush()


def environment() -> dict[str, str]:
    import timm
    import torch
    import torchvision

    return {
        "poolcli": __version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "timm": timm.__version__,
        "python": platform.python_version(),
    }


@contextlib.contextmanager
def progress(description: str, total: int | None) -> Iterator[Any]:
    """A transient progress bar on stderr; a no-op when quiet or when stderr is not a terminal."""
    con = console()
    if STATE["quiet"] or not con.is_terminal:
        yield lambda n=1: None
        return
    with Progress(
        TextColumn("{task.description}", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=con,
        transient=True,
    ) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n=1: bar.advance(task, n)


# ----------------------------------------------------------------------------- option types
ModelArg = Annotated[
    str, typer.Argument(help="Model: a poolcli checkpoint (.safetensors), timm:NAME, tv:NAME or poolcli:NAME.")
]
WeightsOpt = Annotated[
    Optional[Path],
    typer.Option(
        "--weights", help="Weights for timm:/tv: models: .safetensors, or .pt/.pth read with weights_only=True."
    ),
]
NumClassesOpt = Annotated[
    Optional[int], typer.Option("--num-classes", help="Classifier outputs (timm:/tv:/poolcli: specs).")
]
InChansOpt = Annotated[Optional[int], typer.Option("--in-chans", help="Input channels (timm:/poolcli: specs).")]
InputSizeOpt = Annotated[
    Optional[str], typer.Option("--input-size", help="Input size CxHxW, e.g. 3x224x224 (default: the model's).")
]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto (a GPU when present), cpu or cuda[:N].")]
BatchOpt = Annotated[int, typer.Option("--batch-size", "-b", help="Images per batch.")]
WorkersOpt = Annotated[int, typer.Option("--workers", "-j", help="Data-loading worker processes (0 = in process).")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed (same inputs + seed = same outputs).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Write one JSON document to stdout (tables still go to stderr).")]
DataOpt = Annotated[
    str,
    typer.Option(
        "--data",
        "-d",
        help="Dataset: digits[:train|test], folder:PATH, cifar10:PATH, cifar100:PATH, svhn:PATH[:split], tensors:FILE.",
    ),
]
ClassesOpt = Annotated[Optional[str], typer.Option("--classes", help="Class subset, e.g. 0-4 or 1,3,7.")]
LimitOpt = Annotated[Optional[int], typer.Option("--limit", help="Use at most N images (a seeded random subset).")]
BadImagesOpt = Annotated[
    str,
    typer.Option(
        "--bad-images",
        help="error: an unreadable image file stops the run, naming it; skip: decode every selected image once "
        "up front and leave unreadable ones out (they are listed).",
    ),
]
MaxPerClassOpt = Annotated[Optional[int], typer.Option("--max-per-class", help="Use at most N images per class.")]


def load_bundle(
    model: str,
    weights: Path | None = None,
    num_classes: int | None = None,
    in_chans: int | None = None,
    input_size: str | None = None,
):
    from ..models.spec import build_model

    return build_model(model, weights=weights, num_classes=num_classes, in_chans=in_chans, input_size=input_size)
