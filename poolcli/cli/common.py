"""Shared CLI plumbing: option types, the stderr console, JSON to stdout, progress bars.

Everything here is presentation; the commands call library functions and hand results to these helpers.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from ..errors import BadInputError
from ..io.tensorfile import json_safe
from ..text import LINE_LIMIT, literal, quote

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


class _Rate(ProgressColumn):
    """Throughput in the task's unit (``42.1 images/s``)."""

    def render(self, task: Any) -> Text:
        speed = task.finished_speed or task.speed
        unit = task.fields.get("unit", "")
        return Text("" if speed is None else f"{speed:,.1f} {unit}/s")


class CliReporter:
    """A live bar (count, rate, elapsed, ETA) on a terminal; on a log (stderr not a terminal), one plain line
    every ``POOLCLI_PROGRESS_SECONDS`` (default 30) and one at the end of tasks that printed any."""

    def __init__(self, con: Console, interval: float | None = None):
        self.con = con
        self.interval = float(os.environ.get("POOLCLI_PROGRESS_SECONDS", 30)) if interval is None else interval
        self._bar: Progress | None = None
        self._notes: list[Any] = []  # the innermost task's note setter

    def note(self, text: str) -> None:
        if self._notes:
            self._notes[-1](text)

    @contextlib.contextmanager
    def task(self, description: str, total: int | None, unit: str) -> Iterator[Any]:
        if not self.con.is_terminal:
            yield from self._lines(description, total, unit)
            return
        if self._bar is not None:  # a step inside a step (chunks of a solve): one more line in the same bar
            bar = self._bar
            tid = bar.add_task(description, total=total, unit=unit, note="")
            self._notes.append(lambda text: bar.update(tid, note=text))
            try:
                yield lambda n=1: bar.advance(tid, n)
            finally:
                self._notes.pop()
                bar.remove_task(tid)
            return
        with Progress(
            TextColumn("{task.description}", markup=False),
            BarColumn(),
            MofNCompleteColumn(),
            _Rate(),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[note]}", markup=False),
            console=self.con,
            transient=True,
        ) as bar:
            self._bar = bar
            try:
                tid = bar.add_task(description, total=total, unit=unit, note="")
                self._notes.append(lambda text: bar.update(tid, note=text))
                yield lambda n=1: bar.advance(tid, n)
            finally:
                self._notes.pop()
                self._bar = None

    def _lines(self, description: str, total: int | None, unit: str) -> Iterator[Any]:
        start = last = time.monotonic()
        done, printed = 0, False
        status = [""]

        def line(final: bool) -> str:
            elapsed = max(time.monotonic() - start, 1e-9)
            rate = done / elapsed
            of = f"/{total:,}" if total else ""
            pct = f" ({100 * done / total:.1f}%)" if total else ""
            eta = f", ~{(total - done) / rate:.0f} s left" if total and rate > 0 and not final else ""
            tail = f", {status[0]}" if status[0] else ""
            return f"{description}: {done:,}{of} {unit}{pct}, {rate:,.1f} {unit}/s, {elapsed:.0f} s{eta}{tail}"

        def advance(n: int = 1) -> None:
            nonlocal done, last, printed
            done += n
            now = time.monotonic()
            if now - last >= self.interval:
                last, printed = now, True
                self.con.print(line(False), soft_wrap=True)

        self._notes.append(lambda text: status.__setitem__(0, text))
        try:
            yield advance
        finally:
            self._notes.pop()
        if printed:
            self.con.print(line(True) + " (done)", soft_wrap=True)


def install_reporter() -> None:
    """Progress of every pipeline step goes to stderr (nothing when --quiet)."""
    from .. import progress as _progress

    _progress.set_reporter(None if STATE["quiet"] else CliReporter(console()))


# ----------------------------------------------------------------------------- option types
ModelArg = Annotated[
    str,
    typer.Argument(
        metavar="MODEL", help="Model: a poolcli checkpoint (.safetensors), timm:NAME, tv:NAME or poolcli:NAME."
    ),
]
DeviceOpt = Annotated[
    str, typer.Option("--device", metavar="auto|cpu|cuda[:N]", help="auto: a GPU when present, else the CPU.")
]
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
    Literal["error", "skip"],
    typer.Option(
        "--bad-images",
        help="error: an unreadable image file stops the run, naming it; skip: decode every selected image once "
        "up front and leave unreadable ones out (they are listed).",
    ),
]
MaxMemoryOpt = Annotated[
    Optional[str],
    typer.Option(
        "--max-memory",
        metavar="SIZE",
        help="Memory budget, e.g. 8G (default: 3/4 of the available memory; of the GPU's free memory for a "
        "solve on CUDA): the statistics and the solve are planned up front and refused when they cannot fit.",
    ),
]
PrecisionOpt = Annotated[
    Literal["mixed", "float64"],
    typer.Option(
        "--precision",
        help="mixed: each batch's Gram product in float32 (centred maps, upper triangle), summed in float64 "
        "(relative error ~1e-7, 2-4x faster); float64: every product in float64.",
    ),
]
MaxPerClassOpt = Annotated[Optional[int], typer.Option("--max-per-class", help="Use at most N images per class.")]


InterpOpt = Literal["bilinear", "bicubic", "nearest", "lanczos", "box", "hamming"]

MODEL_PANEL = "Model options"

# the model options every command that runs a model takes (added to each by @model_options)
_MODEL_PARAMS = [
    ("weights", Optional[Path], None, typer.Option(
        "--weights", metavar="FILE",
        help="Weights file: .safetensors, or .pt/.pth (weights_only; timm/torchvision training checkpoints "
        "are unwrapped).")),
    ("pretrained", bool, False, typer.Option(
        "--pretrained",
        help="timm:/tv: pretrained weights from the local cache (HF hub / torch hub; never downloaded).")),
    ("use_ema", bool, False, typer.Option(
        "--use-ema", help="Take the EMA weights of a training checkpoint.")),
    ("num_classes", Optional[int], None, typer.Option(
        "--num-classes", metavar="N",
        help="Classifier outputs (timm:/tv:/poolcli:); weights for other classes get a new head.")),
    ("in_chans", Optional[int], None, typer.Option(
        "--in-chans", metavar="C", help="Input channels (timm:/poolcli: specs).")),
    ("input_size", Optional[str], None, typer.Option(
        "--input-size", metavar="CxHxW", help="Input size, e.g. 3x224x224 (default: the model's).")),
    ("crop_pct", Optional[float], None, typer.Option(
        "--crop-pct", metavar="F", help="Photos: centre-crop fraction of the resized image (default: the model's).")),
    ("interpolation", Optional[InterpOpt], None, typer.Option(
        "--interpolation", help="Photos: resize interpolation (default: the model's).")),
    ("mean", Optional[str], None, typer.Option(
        "--mean", metavar="M[,M,M]", help="Normalisation mean per channel (default: the model's).")),
    ("std", Optional[str], None, typer.Option(
        "--std", metavar="S[,S,S]", help="Normalisation std per channel (default: the model's).")),
]  # fmt: skip
MODEL_OPTION_NAMES = tuple(p[0] for p in _MODEL_PARAMS)
for _param in _MODEL_PARAMS:
    _param[3].rich_help_panel = MODEL_PANEL


def _floats(option: str, text: str | None) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise BadInputError(f"bad {option} {quote(text)}: give numbers separated by commas, e.g. 0.5,0.5,0.5") from None


def model_options(fn: Callable) -> Callable:
    """Add the shared model options to a command; it receives them as one dict ``model_opts`` (ready for
    :func:`poolcli.api.load_model`)."""
    sig = inspect.signature(fn, eval_str=True)
    params = [p for p in sig.parameters.values() if p.name != "model_opts"]
    own = {p.name for p in params}  # a command may declare one itself (evaluate: one --weights per model)
    added = [p for p in _MODEL_PARAMS if p[0] not in own]
    extra = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=Annotated[kind, opt])
        for name, kind, default, opt in added
    ]

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        opts = {name: kwargs.pop(name) for name, *_ in added}
        for key in ("mean", "std"):
            if key in opts:
                opts[key] = _floats(f"--{key}", opts[key])
        return fn(*args, model_opts=opts, **kwargs)

    wrapper.__signature__ = sig.replace(parameters=[*params, *extra])  # type: ignore[attr-defined]
    return wrapper
