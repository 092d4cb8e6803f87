"""Fine-tune a (converted) model on a dataset and keep its checkpoint manifest.

After ``convert`` the layers behind a swapped site were trained on the old site's features; a short
fine-tune of the whole network (or of the new pooling only, ``only_pools``) adapts them. Parameters of
the swapped sites get ``pool_lr_mult`` × the learning rate and no weight decay.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from typing import Any

import torch

from ..data.specs import ImageDataset, check_workers, make_loader
from ..errors import BadInputError
from ..metrics.classification import evaluate_classifier
from ..models.bundle import ModelBundle
from ..models.surgery import swapped_operators
from ..ops.gsp import GSP, ZSRLoss
from ..runtime import resolve_device, seed_everything
from ..train.loop import param_groups, train_classifier
from .fingerprint import descent


@dataclasses.dataclass
class FinetuneConfig:
    data: str = "digits:train"
    val: str | None = None
    epochs: int = 10
    lr: float = 1e-3
    optimizer: str = "adam"
    weight_decay: float = 0.0
    batch_size: int = 64
    workers: int = 0
    seed: int = 0
    device: str = "auto"
    shift: int = 0
    only_pools: bool = False
    pool_lr_mult: float = 10.0
    zsr_weight: float = 0.0  # GSP's zero-shot regulariser; the reference classification setup adds it at 0.1
    classes: str | None = None
    limit: int | None = None
    max_per_class: int | None = None
    bad_images: str = "error"

    def check(self) -> None:
        if self.epochs < 1:
            raise BadInputError(f"--epochs must be ≥ 1, got {self.epochs}")
        for name, v in (
            ("--lr", self.lr),
            ("--weight-decay", self.weight_decay),
            ("--pool-lr-mult", self.pool_lr_mult),
            ("--zsr-weight", self.zsr_weight),
        ):
            if not math.isfinite(v):
                raise BadInputError(f"{name} must be a finite number, got {v}")
        if not self.lr > 0:
            raise BadInputError(f"--lr must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise BadInputError(f"--weight-decay must be ≥ 0, got {self.weight_decay}")
        if not self.pool_lr_mult > 0:
            raise BadInputError(f"--pool-lr-mult must be > 0, got {self.pool_lr_mult}")
        if self.optimizer not in ("adam", "adamw", "sgd"):
            raise BadInputError(f"unknown --optimizer '{self.optimizer}': use adam, adamw or sgd")
        if self.shift < 0:
            raise BadInputError(f"--shift must be ≥ 0, got {self.shift}")
        check_workers(self.workers)
        if self.zsr_weight < 0:
            raise BadInputError(f"--zsr-weight must be ≥ 0, got {self.zsr_weight}")


def finetune(
    bundle: ModelBundle,
    cfg: FinetuneConfig,
    train: ImageDataset,
    val: ImageDataset | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[ModelBundle, dict[str, Any]]:
    """Train ``bundle.module`` in place on ``train`` (``val``: accuracy after each epoch); returns the bundle
    (manifest: the run, the class names, the lineage) and a report. ``cfg.data``/``cfg.val`` name them."""
    cfg.check()
    lineage = descent(bundle)  # before training changes the weights
    side = min(bundle.input_size[1:])
    if cfg.shift >= side:
        raise BadInputError(
            f"--shift {cfg.shift} moves the whole {side}-pixel image out of view; give a shift below {side} "
            f"(a few pixels, e.g. {max(1, side // 16)})"
        )
    seed_everything(cfg.seed)
    dev = resolve_device(cfg.device)
    outputs = bundle.num_classes
    if outputs is not None and int(train.labels.max()) >= outputs:
        raise BadInputError(
            f"{cfg.data} has labels up to {int(train.labels.max())} but the model has {outputs} outputs; "
            "select classes with --classes or build the model with --num-classes"
        )
    if outputs is not None and len(train.classes) != outputs:
        raise BadInputError(
            f"{cfg.data} has {len(train.classes)} classes but {bundle.spec} has {outputs} outputs; build it with "
            f"--num-classes {len(train.classes)} (a head trained for other classes is re-initialised)"
        )
    if bundle.classes is not None and list(bundle.classes) != list(train.classes):
        raise BadInputError(
            f"{cfg.data}'s class names differ from those {bundle.spec} was trained on; fine-tune it on data of "
            "the same classes, or start from its architecture with --num-classes"
        )
    if val is not None and list(val.classes) != list(train.classes):
        raise BadInputError(
            f"--val {cfg.val}'s classes differ from the training data's ({len(val.classes)} vs "
            f"{len(train.classes)} classes, or another order); validate on data of the same classes"
        )
    pool_paths = [s["site"] for s in bundle.swaps if s.get("op")]
    pools = swapped_operators(bundle.module)
    try:
        groups = param_groups(bundle.module, cfg.lr, cfg.weight_decay, pools, cfg.pool_lr_mult, cfg.only_pools)
    except ValueError as e:
        raise BadInputError(
            f"{e}; {'drop --only-pools or ' if cfg.only_pools else ''}convert the model first"
        ) from None
    loader = make_loader(
        train, cfg.batch_size, cfg.workers, shuffle=True, seed=cfg.seed, drop_last=len(train) > cfg.batch_size
    )

    def validate() -> dict[str, float]:
        m = evaluate_classifier(bundle.module, make_loader(val, cfg.batch_size, cfg.workers), dev)
        return {"val_top1": m["top1"], "val_loss": m["loss"]}

    extra_loss, zsr_modules = _zsr(bundle, pools, cfg, len(train.classes), groups, dev)

    trainable = sum(p.numel() for g in groups for p in g["params"])
    t0 = time.perf_counter()
    history = train_classifier(
        bundle.module,
        loader,
        epochs=cfg.epochs,
        lr=cfg.lr,
        device=dev,
        optimizer=cfg.optimizer,
        weight_decay=cfg.weight_decay,
        max_shift=cfg.shift,
        seed=cfg.seed,
        on_epoch=on_epoch,
        groups=groups,
        validate=validate if val is not None else None,
        extra_loss=extra_loss,
    )
    for m in zsr_modules:
        m.keep_attributes, m.attributes = False, None
    bundle.module.to("cpu").eval()
    seconds = round(time.perf_counter() - t0, 1)
    # the checkpoint records what decides the weights, never wall-clock times (same inputs + seed = same bytes);
    # the report has the timings
    final = {k: v for k, v in history[-1].items() if k != "seconds"}
    record = {
        **dataclasses.asdict(cfg),
        "device": str(dev),
        "images": len(train),
        "trainable_params": trainable,
        "pool_sites": pool_paths,
        "final": final,
    }
    # the parent's facts (its accuracy, its own training) are lineage, not facts of this model
    # the parent by its content (a path would make the same run give other bytes from another folder)
    extra = {"origin": {"weights": "finetuned", "data": cfg.data}, "lineage": lineage, "finetune": record}
    report = {"schema": "poolcli.finetune/2", **record, "final": history[-1], "seconds": seconds, "history": history}
    return dataclasses.replace(bundle, extra=extra, classes=list(train.classes)), report


def _zsr(
    bundle: ModelBundle,
    pools: list[torch.nn.Module],
    cfg: FinetuneConfig,
    num_classes: int,
    groups: list[dict],
    device: torch.device,
):
    """The GSP zero-shot regulariser (seed 004): weight · ZSR(z, y) for every GSP module at a swapped site,
    added to the cross-entropy (as the GSP paper's reference setup does, at 0.1; arXiv:2308.09228), with
    the class embeddings trained alongside (added to ``groups``). Off by default: on the digits fixture
    it slowed fine-tuning down (README, "Fine-tuning")."""
    if cfg.zsr_weight == 0:
        return None, []
    gsps = [m for op in pools for m in op.modules() if isinstance(m, GSP)]
    if not gsps:
        raise BadInputError("--zsr-weight needs a GSP pooling site; convert with --swap @global=gsp first")
    losses = [ZSRLoss(num_classes, m.proj.out_channels).to(device) for m in gsps]
    groups.append({"params": [p for loss in losses for p in loss.parameters()], "lr": cfg.lr, "weight_decay": 0.0})
    for m in gsps:
        m.keep_attributes = True

    def extra(labels: torch.Tensor) -> torch.Tensor:
        return cfg.zsr_weight * sum(loss(m.attributes, labels) for m, loss in zip(gsps, losses))

    return extra, gsps
