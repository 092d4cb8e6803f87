"""poolcli finetune: train a (converted) model on a dataset and write a checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Optional

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
    info,
    model_options,
)


@app.command("finetune")
@model_options
def finetune_cmd(
    model: Annotated[str, typer.Argument(help="Model to train (usually a 'poolcli convert' checkpoint).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Checkpoint to write (.safetensors).")],
    data: DataOpt = "digits:train",
    val: Annotated[
        Optional[str], typer.Option("--val", help="Dataset to evaluate after each epoch, e.g. digits:test.")
    ] = None,
    epochs: Annotated[int, typer.Option("--epochs", help="Passes over the training data.")] = 10,
    lr: Annotated[float, typer.Option("--lr", help="Base learning rate (see --schedule).")] = 1e-3,
    schedule: Annotated[
        str,
        typer.Option(
            "--schedule",
            metavar="KIND",
            help="cosine (to 0 per step), step:E1,E2 (×0.1 from those 1-based epochs), constant, or plateau[:P] (×0.1 "
            "after more than P epochs without a better validation metric — top-1, MAP@R for metric losses — or "
            "training loss without --val).",
        ),
    ] = "cosine",
    warmup: Annotated[int, typer.Option("--warmup", metavar="EPOCHS", help="Linear warmup, per step.")] = 0,
    optimizer: Annotated[Literal["adam", "adamw", "sgd"], typer.Option("--optimizer")] = "adam",
    momentum: Annotated[float, typer.Option("--momentum", help="SGD momentum.")] = 0.9,
    nesterov: Annotated[bool, typer.Option("--nesterov", help="SGD with Nesterov momentum.")] = False,
    label_smoothing: Annotated[
        float, typer.Option("--label-smoothing", metavar="EPS", help="Cross-entropy label smoothing.")
    ] = 0.0,
    clip_grad: Annotated[
        Optional[float], typer.Option("--clip-grad", metavar="NORM", help="Clip the gradient's global L2 norm.")
    ] = None,
    loss: Annotated[
        str,
        typer.Option(
            "--loss",
            metavar="NAME",
            help="ce, or a metric-learning loss from pytorch-metric-learning on L2-normalised embeddings: "
            "contrastive, triplet, multisimilarity, circle, supcon, ntxent, proxyanchor, normsoftmax, arcface, "
            "softtriple (class-balanced P×K batches, validation by MAP@R).",
        ),
    ] = "ce",
    embedding_dim: Annotated[
        Optional[int],
        typer.Option(
            "--embedding-dim",
            metavar="D",
            help="Metric learning: a Linear embedding head to D (default the pooled features).",
        ),
    ] = None,
    classes_per_batch: Annotated[
        Optional[int], typer.Option("--classes-per-batch", metavar="P", help="P×K batches: classes per batch.")
    ] = None,
    per_class: Annotated[
        Optional[int],
        typer.Option("--per-class", metavar="K", help="P×K batches: images per class (default 4 for metric losses)."),
    ] = None,
    augment: Annotated[
        str,
        typer.Option(
            "--augment",
            metavar="KIND",
            help="none, shift:N (±N px), crop-flip:PAD (pad-crop + horizontal flip: seed 001's CIFAR recipe), or "
            "imagenet (random-resized crop + flip: timm's training transform from the model's data config).",
        ),
    ] = "none",
    amp: Annotated[
        Optional[str],
        typer.Option("--amp", metavar="bf16|fp16", help="Mixed precision (autocast; fp16 with a gradient scaler)."),
    ] = None,
    ema: Annotated[
        Optional[float],
        typer.Option(
            "--ema", metavar="DECAY", help="timm's model EMA at this decay: validated, kept as best and as the result."
        ),
    ] = None,
    channels_last: Annotated[bool, typer.Option("--channels-last", help="Channels-last memory format.")] = False,
    sync_bn: Annotated[
        bool, typer.Option("--sync-bn", help="torchrun on GPUs: BatchNorm statistics over the global batch.")
    ] = False,
    from_scratch: Annotated[
        bool,
        typer.Option(
            "--from-scratch",
            help="Re-initialise every tensor except the swapped operators' (seed 001 retrains from random "
            "initialisation around its fitted pooling).",
        ),
    ] = False,
    holdout: Annotated[
        Optional[float],
        typer.Option(
            "--holdout",
            metavar="FRACTION",
            help="Validate on a stratified held-out part of --data (e.g. 0.2: 5 folds) instead of --val.",
        ),
    ] = None,
    fold: Annotated[int, typer.Option("--fold", metavar="K", help="Which held-out fold (0..folds-1).")] = 0,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Continue the run from OUT.last.safetensors (written after every epoch and on Ctrl-C/SIGTERM); "
            "on CPU the result is bit-identical to an uninterrupted run. Starts over when there is no state yet.",
        ),
    ] = False,
    weight_decay: Annotated[
        float, typer.Option("--weight-decay", help="Weight decay (not applied to pooling parameters).")
    ] = 0.0,
    shift: Annotated[int, typer.Option("--shift", help="Random translation augmentation of ±N pixels.")] = 0,
    only_pools: Annotated[
        bool,
        typer.Option(
            "--only-pools",
            help="Train only the swapped operators: every other tensor (BatchNorm statistics too) stays as it was.",
        ),
    ] = False,
    pool_lr_mult: Annotated[
        float, typer.Option("--pool-lr-mult", help="Learning-rate multiplier for the swapped sites' parameters.")
    ] = 10.0,
    zsr_weight: Annotated[
        float,
        typer.Option(
            "--zsr-weight",
            help="Add GSP's zero-shot regulariser at this weight (the GSP papers use 0.1; needs a GSP site).",
        ),
    ] = 0.0,
    batch_size: BatchOpt = 64,
    workers: WorkersOpt = 0,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    classes: ClassesOpt = None,
    limit: LimitOpt = None,
    max_per_class: MaxPerClassOpt = None,
    bad_images: BadImagesOpt = "error",
    json_out: JsonOpt = False,
    model_opts: dict | None = None,
) -> None:
    """Fine-tune a model (cross-entropy or a metric-learning loss) and write a checkpoint with the same swaps; the
    training state, the best model (with --val or --holdout) and a per-epoch log are written beside it after every
    epoch.

    Example: poolcli finetune learned.safetensors --data digits:train --val digits:test --epochs 30
    -o learned-ft.safetensors
    """

    def show(rec: dict) -> None:
        from ..runtime import main_process

        if not main_process():
            return
        extra = f", train top-1 {100 * rec['train_top1']:.2f}%" if "train_top1" in rec else ""
        extra += f", val top-1 {100 * rec['val_top1']:.2f}%" if "val_top1" in rec else ""
        extra += f", val MAP@R {100 * rec['val_map_at_r']:.2f}%" if "val_map_at_r" in rec else ""
        info(f"epoch {rec['epoch']}/{epochs}: loss {rec['loss']:.4f}{extra} ({rec['seconds']:.1f}s)")

    from .. import api

    _, doc = api.finetune(
        model,
        data,
        output=output,
        on_epoch=show,
        val=val,
        epochs=epochs,
        lr=lr,
        schedule=schedule,
        warmup=warmup,
        optimizer=optimizer,
        momentum=momentum,
        nesterov=nesterov,
        label_smoothing=label_smoothing,
        clip_grad=clip_grad,
        resume=resume,
        from_scratch=from_scratch,
        augment=augment,
        amp=amp,
        ema=ema,
        channels_last=channels_last,
        sync_bn=sync_bn,
        loss=loss,
        embedding_dim=embedding_dim,
        classes_per_batch=classes_per_batch,
        per_class=per_class,
        holdout=holdout,
        fold=fold,
        weight_decay=weight_decay,
        batch_size=batch_size,
        workers=workers,
        seed=seed,
        device=device,
        shift=shift,
        only_pools=only_pools,
        pool_lr_mult=pool_lr_mult,
        zsr_weight=zsr_weight,
        classes=classes,
        limit=limit,
        max_per_class=max_per_class,
        bad_images=bad_images,
        **(model_opts or {}),
    )
    from ..runtime import main_process

    if not main_process():  # under torchrun rank 0 reports
        return
    if not STATE["quiet"]:
        table = Table(title=f"finetune {model} → {output}", title_justify="left")
        f = doc["final"]
        pct = lambda k: f"{100 * f[k]:.2f}%" if k in f else "-"  # noqa: E731
        cols = ("epochs", "images", "trainable params", "loss", "train top-1", "val top-1", "val MAP@R", "seconds")
        for col in cols:
            table.add_column(col, justify="right")
        table.add_row(
            str(epochs),
            str(doc["images"]),
            f"{doc['trainable_params']:,}",
            f"{f['loss']:.4f}",
            pct("train_top1"),
            pct("val_top1"),
            pct("val_map_at_r"),
            f"{doc['seconds']:.1f}",
        )
        console().print(table)
    if json_out:
        emit_json(doc)
