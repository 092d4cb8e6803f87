"""Fine-tune a (converted) model on a dataset and keep its checkpoint manifest.

After ``convert`` the layers behind a swapped site were trained on the old site's features; a short
fine-tune of the whole network (or of the new pooling only, ``only_pools``) adapts them. Parameters of
the swapped sites get ``pool_lr_mult`` × the learning rate and no weight decay.
"""

from __future__ import annotations

import contextlib
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
from ..runtime import init_distributed, main_process, resolve_device, seed_everything
from ..train import engine
from ..train.loop import make_optimizer, param_groups
from ..train.schedule import Schedule
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
    schedule: str = "cosine"
    warmup: int = 0
    momentum: float = 0.9
    nesterov: bool = False
    label_smoothing: float = 0.0
    clip_grad: float | None = None
    from_scratch: bool = False
    loss: str = "ce"
    embedding_dim: int | None = None  # metric learning: a Linear head to this dimension (default the pooled features)
    classes_per_batch: int | None = None  # P of P×K batches
    per_class: int | None = None  # K of P×K batches
    augment: str = "none"  # none | shift:N | crop-flip:PAD | imagenet
    amp: str | None = None  # bf16 | fp16
    ema: float | None = None  # decay of timm's ModelEmaV3
    channels_last: bool = False
    sync_bn: bool = False
    holdout: float | None = None
    fold: int = 0
    resume: bool = False
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
        Schedule.parse(self.schedule, self.warmup)
        if self.warmup >= self.epochs:
            raise BadInputError(f"--warmup {self.warmup} must be shorter than --epochs {self.epochs}")
        if not (math.isfinite(self.momentum) and 0 <= self.momentum < 1):
            raise BadInputError(f"--momentum must be in [0, 1), got {self.momentum}")
        if not (math.isfinite(self.label_smoothing) and 0 <= self.label_smoothing < 1):
            raise BadInputError(f"--label-smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.clip_grad is not None and not (math.isfinite(self.clip_grad) and self.clip_grad > 0):
            raise BadInputError(f"--clip-grad must be a positive norm, got {self.clip_grad}")
        from ..train.metric import LOSSES

        if self.loss not in LOSSES:
            raise BadInputError(f"unknown --loss {self.loss!r}: use one of {', '.join(LOSSES)}")
        if self.embedding_dim is not None and (self.loss == "ce" or self.embedding_dim < 1):
            raise BadInputError(
                "--embedding-dim is the embedding head of a metric-learning --loss (≥ 1), e.g. --loss "
                "multisimilarity --embedding-dim 128"
            )
        from ..data.augment import parse_augment

        parse_augment(self.augment)
        if self.augment != "none" and self.shift:
            raise BadInputError("--shift N is --augment shift:N: give one of them")
        if self.optimizer != "sgd" and (self.nesterov or self.momentum != 0.9):
            raise BadInputError("--momentum and --nesterov are SGD's: use them with --optimizer sgd")
        if self.nesterov and self.momentum == 0:
            raise BadInputError("--nesterov needs momentum: give --momentum > 0")
        if self.loss != "ce" and self.label_smoothing:
            raise BadInputError("--label-smoothing is cross-entropy's: drop it with a metric-learning --loss")
        if self.loss == "ce" and self.classes_per_batch is not None and self.per_class is None:
            raise BadInputError("--classes-per-batch makes P×K batches with --per-class K: give --per-class too")
        if self.per_class == 1 and self.loss not in ("ce", "proxyanchor", "normsoftmax", "arcface", "softtriple"):
            raise BadInputError(f"--loss {self.loss} needs pairs of a class in a batch: give --per-class ≥ 2")
        if self.loss != "ce" and self.zsr_weight > 1:
            raise BadInputError("--zsr-weight w mixes (1−w)·L_DML + w·L_ZSR for metric losses: give w in [0, 1]")
        if self.from_scratch and self.only_pools:
            raise BadInputError("--from-scratch --only-pools would train the pooling inside a random network: drop one")
        if self.amp not in (None, "bf16", "fp16"):
            raise BadInputError(f"--amp must be bf16 or fp16, not {self.amp!r}")
        if self.ema is not None and not (math.isfinite(self.ema) and 0 < self.ema < 1):
            raise BadInputError(f"--ema is the averaging decay in (0, 1), e.g. 0.999; got {self.ema}")
        for name, v in (("--classes-per-batch", self.classes_per_batch), ("--per-class", self.per_class)):
            if v is not None and v < 1:
                raise BadInputError(f"{name} must be ≥ 1, got {v}")
        if self.holdout is None and self.fold != 0:
            raise BadInputError("--fold picks a held-out fold: give --holdout too (e.g. --holdout 0.2 --fold 3)")
        if self.holdout is not None:
            if not (math.isfinite(self.holdout) and 0 < self.holdout <= 0.5):
                raise BadInputError(f"--holdout must be a fraction in (0, 0.5], got {self.holdout}")
            k = round(1 / self.holdout)
            if abs(1 / self.holdout - k) > 1e-6:
                raise BadInputError(f"--holdout {self.holdout} is not 1/K: give 0.5, 0.25, 0.2, 0.1 ... (K folds)")
            if not 0 <= self.fold < k:
                raise BadInputError(
                    f"--fold must be in 0..{k - 1} for --holdout {self.holdout} ({k} folds), got {self.fold}"
                )

    def fingerprint(self) -> dict[str, Any]:
        """What decides the weights (a resumed run must match): not the device, workers or --resume."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in ("device", "workers", "resume")}


def run_files(output: Any) -> dict[str, Any]:
    """The files a fine-tune writes beside ``-o OUT.safetensors``: the training state after every epoch
    (``OUT.last.safetensors``, what ``--resume`` reads), the best model by the validation metric — top-1, or MAP@R
    for metric losses — (``OUT.best.safetensors``, with ``--val``/``--holdout``) and the per-epoch log
    (``OUT.log.jsonl``)."""
    from pathlib import Path

    if output is None:
        return {}
    out = Path(output)
    stem = out.name[: -len(".safetensors")] if out.name.endswith(".safetensors") else out.name
    return {
        "state": out.with_name(stem + ".last.safetensors"),
        "best": out.with_name(stem + ".best.safetensors"),
        "log": out.with_name(stem + ".log.jsonl"),
    }


def finetune(
    bundle: ModelBundle,
    cfg: FinetuneConfig,
    train: ImageDataset,
    val: ImageDataset | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    files: dict[str, Any] | None = None,
) -> tuple[ModelBundle, dict[str, Any]]:
    """Train ``bundle.module`` in place on ``train`` (``val``: accuracy after each epoch); returns the bundle
    (manifest: the run, the class names, the lineage, the history) and a report. ``cfg.data``/``cfg.val`` name
    them. ``files`` (:func:`run_files`): the training state, best model and log written every epoch;
    ``cfg.resume`` continues from the state."""
    cfg.check()
    lineage = descent(bundle)  # before training changes the weights
    side = min(bundle.input_size[1:])
    if cfg.shift >= side:
        raise BadInputError(
            f"--shift {cfg.shift} moves the whole {side}-pixel image out of view; give a shift below {side} "
            f"(a few pixels, e.g. {max(1, side // 16)})"
        )
    seed_everything(cfg.seed)
    if cfg.embedding_dim is not None:
        bundle = _embedding_head(bundle, cfg.embedding_dim, cfg.seed)
    if cfg.from_scratch:
        _reinitialise(bundle, cfg.seed)
    dev = resolve_device(cfg.device)
    metric_learning = cfg.loss != "ce"
    outputs = None if metric_learning else bundle.num_classes  # a metric loss never reads the class outputs
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
    if not metric_learning and bundle.classes is not None and list(bundle.classes) != list(train.classes):
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

    def validate() -> dict[str, float]:
        m = evaluate_classifier(bundle.module, make_loader(val, cfg.batch_size, cfg.workers), dev)
        return {"val_top1": m["top1"], "val_loss": m["loss"]}

    _init_gsp(bundle, pools, cfg)
    extra_loss, zsr_modules, zsr_losses = _zsr(bundle, pools, cfg, len(train.classes), groups, dev)
    learner = _MetricLearning(bundle, cfg, train, val, groups, dev) if metric_learning else None
    extra_modules = zsr_losses + ([learner.criterion] if learner is not None else [])
    ema = None
    if cfg.ema is not None:  # timm's model EMA (what timm's train.py --model-ema uses)
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(bundle.module.to(dev), decay=cfg.ema)
        extra_modules.append(ema)
    base_lrs = [g["lr"] for g in groups]
    optimizer = make_optimizer(groups, cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.momentum, cfg.nesterov)
    schedule = Schedule.parse(cfg.schedule, cfg.warmup)
    setup = engine.Setup(
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        device=dev,
        workers=cfg.workers,
        label_smoothing=cfg.label_smoothing,
        clip_grad=cfg.clip_grad,
        drop_last=len(train) > cfg.batch_size,
        only=pools if cfg.only_pools else None,
    )
    setup.rank, setup.world = init_distributed()
    setup.lr = cfg.lr
    if setup.world > 1 and min(setup.batch_size, len(train)) < setup.world:
        raise BadInputError(
            f"a global batch of {min(setup.batch_size, len(train))} cannot be split over {setup.world} ranks: give "
            "--batch-size (and data) of at least the number of ranks"
        )
    if cfg.sync_bn:  # torch's SyncBatchNorm: statistics over the global batch (GPU ranks only)
        if setup.world < 2 or dev.type != "cuda":
            raise BadInputError(
                "--sync-bn synchronises BatchNorm over torchrun ranks on GPUs (torch's SyncBatchNorm has no CPU "
                "path); drop it here"
            )
        torch.nn.SyncBatchNorm.convert_sync_batchnorm(bundle.module)
    setup.amp, setup.channels_last, setup.ema = cfg.amp, cfg.channels_last, ema
    from ..data.augment import ImagenetTrain, parse_augment

    setup.augment = ("shift", cfg.shift) if cfg.shift else parse_augment(cfg.augment)  # --shift N = shift:N
    prep = getattr(train, "preprocess", None)
    if setup.augment[0] == "crop-flip":
        setup.fill = (-prep.mean / prep.std).flatten() if prep is not None and hasattr(prep, "mean") else None
        if setup.fill is None:
            raise BadInputError(
                "--augment crop-flip needs a data spec (its padding is black in the model's normalisation)"
            )
    train_data = train
    if setup.augment[0] == "imagenet":
        if not hasattr(train, "raw") or not hasattr(prep, "geometry"):
            raise BadInputError("--augment imagenet needs a data spec whose images it can crop (e.g. folder:DIR)")
        train_data = ImagenetTrain(train, cfg.seed)
    batches_of = None
    pk: tuple[int, int] | None = None  # (P classes, K images) of P×K batches
    if learner is not None or cfg.per_class is not None:
        from ..train.metric import DEFAULT_PER_CLASS, check_pk, pk_batches

        k = cfg.per_class or DEFAULT_PER_CLASS
        present = int(torch.unique(train.labels).numel())
        p_classes = cfg.classes_per_batch or max(2, min(present, cfg.batch_size // k))
        check_pk(train.labels, p_classes, k)
        setup.batch_size = p_classes * k
        pk = (p_classes, k)

        def batches_of(epoch: int) -> list[list[int]]:
            return pk_batches(train.labels, p_classes, k, cfg.seed, epoch)

    files = files or {}
    meta: dict[str, Any] = {"fingerprint": {**cfg.fingerprint(), "parent": lineage}, "best": None}
    watch = ("val_map_at_r", True) if learner is not None else ("val_top1", True)
    meta["schedule_state"] = schedule.state()
    progress = engine.Progress()
    bundle.module.to(dev)
    if cfg.resume and files.get("state") is not None and files["state"].exists():
        progress = _resume(files["state"], bundle, optimizer, extra_modules, meta, schedule)
    trainable = sum(p.numel() for g in groups for p in g["params"])
    # class names name the classifier's outputs: the training classes for cross-entropy; a metric loss leaves the
    # classifier as it was (or made it an embedding head, which has no classes)
    classes = list(train.classes) if not metric_learning else bundle.classes

    def manifest_bundle(history: list[dict[str, Any]]) -> ModelBundle:
        record = {
            **{k: v for k, v in dataclasses.asdict(cfg).items() if k != "resume"},
            "device": str(dev),
            "images": len(train),
            "trainable_params": trainable,
            "pool_sites": pool_paths,
            "schedule": schedule.describe(),
            "batch": setup.batch_size,
            **({"batches": f"P×K: {pk[0]} classes × {pk[1]} images"} if pk is not None else {}),
            **({"metric_learning": learner.describe()} if learner is not None else {}),
            "final": history[-1],
            "history": history,
        }
        # the parent's facts (its accuracy, its own training) are lineage, not facts of this model
        # the parent by its content (a path would make the same run give other bytes from another folder)
        extra = {"origin": {"weights": "finetuned", "data": cfg.data}, "lineage": lineage, "finetune": record}
        if learner is not None and learner.head is not None:
            extra["embedding_head"] = learner.head
        elif bundle.extra.get("embedding_head") is not None:
            extra["embedding_head"] = bundle.extra["embedding_head"]
        return dataclasses.replace(bundle, extra=extra, classes=classes)

    timings: dict[int, float] = {}

    def epoch_done(rec: dict[str, Any], p: engine.Progress) -> None:
        timings[rec["epoch"]] = rec["seconds"]
        if main_process():  # under torchrun rank 0 writes
            _epoch_files(files, p, timings, meta, manifest_bundle, watch[0])
        if on_epoch:
            on_epoch(rec)

    t0 = time.perf_counter()
    with learner.capturing() if learner is not None else contextlib.nullcontext():
        progress = engine.train(
            bundle.module,
            train_data,
            optimizer,
            base_lrs,
            schedule,
            setup,
            progress=progress,
            extra_loss=extra_loss,
            extra_modules=extra_modules,
            validate=(learner.validate if learner is not None else validate) if val is not None else None,
            state_path=files.get("state"),
            state_meta=meta,
            on_epoch=epoch_done,
            step_loss=learner.step_loss if learner is not None else None,
            batches_of=batches_of,
            metric=watch,
        )
    for m in zsr_modules:
        m.keep_attributes, m.attributes = False, None
    bundle.module.to("cpu").eval()
    seconds = round(time.perf_counter() - t0, 1)
    # the checkpoint records what decides the weights, never wall-clock times (same inputs + seed = same bytes);
    # the report has the timings
    history = progress.history
    out = manifest_bundle(history)
    record = out.extra["finetune"]
    timed = [{**h, **({"seconds": timings[h["epoch"]]} if h["epoch"] in timings else {})} for h in history]
    report = {
        "schema": "poolcli.finetune/3",
        **record,
        "final": timed[-1],
        "seconds": seconds,
        "history": timed,
        "best": meta["best"],
        "files": {k: str(v) for k, v in files.items()},
    }
    return out, report


def _resume(path, bundle: ModelBundle, optimizer, extra_modules, meta: dict[str, Any], schedule: Schedule):
    """Load the state at ``path`` into the model and optimizer after checking it is this run's."""
    from ..text import quote
    from ..train.state import load_state

    saved = load_state(path, bundle.module, optimizer, extra_modules)
    theirs = saved.get("fingerprint") or {}
    mine = meta["fingerprint"]
    differ = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
    if differ:
        raise BadInputError(
            f"{quote(path)} was written by another run (it differs in {', '.join(differ[:4])}); rerun with the same "
            "model, data and options, or drop --resume to start over"
        )
    try:
        progress = engine.Progress.from_meta(saved["progress"])
        schedule.load(saved.get("schedule_state") or {})
    except (KeyError, TypeError, ValueError):
        raise BadInputError(f"{quote(path)} holds a malformed training state; drop --resume to start over") from None
    _check_progress(progress, saved, path, bundle)
    meta["best"] = saved.get("best")
    meta["scaler"] = saved.get("scaler")
    return progress


def _check_progress(progress: engine.Progress, saved: dict[str, Any], path, bundle: ModelBundle) -> None:
    """A state's numbers are untrusted: its position, sums, history and best must be what a run writes."""
    from ..text import quote

    epochs = int(saved.get("fingerprint", {}).get("epochs", 0))
    h = progress.history
    loss, correct, seen = progress.sums
    best = saved.get("best")
    ok = (
        isinstance(saved["progress"].get("epoch"), int)
        and isinstance(saved["progress"].get("step"), int)
        and 0 <= progress.epoch <= epochs
        and progress.step >= 0
        and (progress.step == 0 or progress.epoch < epochs)
        and len(h) == progress.epoch
        and all(isinstance(r, dict) and r.get("epoch") == i + 1 for i, r in enumerate(h))
        and math.isfinite(loss)
        and loss >= 0
        and 0 <= correct <= seen
        and (best is None or (isinstance(best, dict) and len(best) == 2 and "epoch" in best))
    )
    if not ok:
        raise BadInputError(f"{quote(path)} holds an inconsistent training state; drop --resume to start over")


def _init_gsp(bundle: ModelBundle, pools: list, cfg: FinetuneConfig) -> None:
    """GSP operators whose prototypes are not set yet get them now from the training data (as ``convert
    --init-data`` does), before the first step: the same on every rank and in a resumed run, and an EMA starts
    from them (set lazily from the first batches, they were neither)."""
    gsps = [m for op in pools for m in op.modules() if isinstance(m, GSP)]
    waiting = [m for m in gsps if not bool(m.initialized)]
    if not waiting:
        return
    from .gspinit import init_gsp_prototypes

    images = max(m.memory_size for m in waiting)
    try:
        init_gsp_prototypes(bundle, cfg.data, images=images, batch_size=cfg.batch_size, seed=cfg.seed)
    except BadInputError as e:
        raise BadInputError(f"{e}; or set GSP's prototypes first with convert --init-data") from None


def _epoch_files(files, p: engine.Progress, timings, meta, manifest_bundle, key: str) -> None:
    """After an epoch: the log (rewritten whole from the history, atomically) and the best model by ``key``."""
    import json

    from ..io.atomic import write_text_atomic
    from ..models.checkpoint import save_checkpoint

    rec = p.history[-1]
    if files.get("best") is not None and key in rec:
        best = meta.get("best")
        if best is None or rec[key] > best[key]:
            save_checkpoint(manifest_bundle(p.history), None, files["best"])
            meta["best"] = {"epoch": rec["epoch"], key: rec[key]}
    if files.get("log") is not None:
        lines = [{**h, **({"seconds": timings[h["epoch"]]} if h["epoch"] in timings else {})} for h in p.history]
        write_text_atomic(files["log"], "".join(json.dumps(line) + "\n" for line in lines))


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
        return None, [], []
    gsps = [m for op in pools for m in op.modules() if isinstance(m, GSP)]
    if not gsps:
        raise BadInputError("--zsr-weight needs a GSP pooling site; convert with --swap @global=gsp first")
    losses = [ZSRLoss(num_classes, m.proj.out_channels).to(device) for m in gsps]
    groups.append({"params": [p for loss in losses for p in loss.parameters()], "lr": cfg.lr, "weight_decay": 0.0})
    for m in gsps:
        m.keep_attributes = True

    def extra(main: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        zsr = sum(loss(m.attributes, labels) for m, loss in zip(gsps, losses))
        if cfg.loss == "ce":  # the classification reference adds it: CE + w·ZSR
            return main + cfg.zsr_weight * zsr
        return (1 - cfg.zsr_weight) * main + cfg.zsr_weight * zsr  # metric learning: (1−w)·L_DML + w·L_ZSR

    return extra, gsps, losses


def _reinitialise(bundle: ModelBundle, seed: int) -> None:
    """Seed 001's protocol: every parameter and buffer drawn anew by the architecture's own initialisation (the
    base rebuilt by its library, seeded, the swaps replayed), except the swapped operators' tensors (fitted
    pooling weights, initialised prototypes), which are kept."""
    from ..models.spec import build_base
    from ..models.surgery import apply_swaps

    torch.manual_seed(seed)
    fresh = build_base(bundle.base["source"], bundle.base["name"], dict(bundle.base.get("kwargs", {})))
    apply_swaps(fresh, bundle.swaps)
    ops = set(swapped_operators(bundle.module))
    prefixes = tuple(name + "." for name, m in bundle.module.named_modules() if m in ops)
    state = fresh.state_dict()
    current = bundle.module.state_dict()
    if set(state) != set(current):
        raise BadInputError(
            f"{bundle.spec} cannot be rebuilt from its manifest for --from-scratch (its tensors differ)"
        )
    for key in current:
        if key.startswith(prefixes):
            state[key] = current[key]
    bundle.module.load_state_dict(state)


class _MetricLearning:
    """A metric-learning fine-tune: the loss on L2-normalised embeddings — the pre-logit features (the classifier's
    input), or the output of the head when the model was built with ``--embedding-dim`` D (its classifier became a
    Linear to D) — and MAP@R of the validation embeddings (leave-one-out, cosine; evaluate's retrieval code) as
    the per-epoch metric."""

    def __init__(self, bundle: ModelBundle, cfg: FinetuneConfig, train, val, groups: list[dict], dev: torch.device):
        from ..models.embed import EmbeddingTap, classifier_path, find_embedding
        from ..train.metric import PROXY_LOSSES, PROXY_LR_MULT, MetricCriterion

        self.bundle, self.cfg, self.val, self.dev = bundle, cfg, val, dev
        self.head = None
        if cfg.embedding_dim is not None:
            path = classifier_path(bundle.module)
            if path is None:
                raise BadInputError(f"{bundle.spec} has no Linear head to turn into a {cfg.embedding_dim}-d embedding")
            self.tap = EmbeddingTap(path, "output", f"embedding head: output of {path}")
            self.head = {"path": path, "dim": cfg.embedding_dim}
        else:
            self.tap = find_embedding(bundle)
        probe = next(iter(make_loader(train, 2)))[0].to(dev)
        from ..models.embed import capture_embeddings

        with torch.no_grad(), capture_embeddings(bundle.module.to(dev).eval(), self.tap) as box:
            bundle.module(probe)
        self.dim = int(box["embedding"].shape[1])
        self.criterion = MetricCriterion(cfg.loss, len(train.classes), self.dim).to(dev)
        if cfg.loss in PROXY_LOSSES:
            groups.append(
                {"params": list(self.criterion.parameters()), "lr": cfg.lr * PROXY_LR_MULT, "weight_decay": 0.0}
            )
        self.box: dict[str, torch.Tensor] = {}

    @contextlib.contextmanager
    def capturing(self):
        from ..models.embed import capture_embeddings

        with capture_embeddings(self.bundle.module, self.tap, detach=False) as box:
            self.box = box
            yield

    def step_loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, None]:
        self.bundle.module(x)
        return self.criterion(self.box["embedding"], y), None

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        from ..metrics.retrieval import retrieval_metrics

        embs, labels = [], []
        for x, y in make_loader(self.val, self.cfg.batch_size, self.cfg.workers):
            self.bundle.module(x.to(self.dev))
            embs.append(self.box["embedding"].detach().cpu())
            labels.append(y)
        res = retrieval_metrics(torch.cat(embs), torch.cat(labels), recall_k=[1], full_map=False, clustering=False)
        return {"val_map_at_r": res.metrics["map_at_r"], "val_precision_at_1": res.metrics["precision_at_1"]}

    def describe(self) -> dict[str, Any]:
        return {**self.criterion.describe(), "embedding": self.tap.description, "dim": self.dim, "validation": "MAP@R"}


def _embedding_head(bundle: ModelBundle, dim: int, seed: int) -> ModelBundle:
    """The classifier replaced by the head the architecture builds for ``dim`` outputs (a Linear to the
    embedding, the library's own initialisation, seeded); the manifest's base then says ``num_classes=dim``, so
    the checkpoint reloads with the head. A model whose head already has ``dim`` outputs keeps it."""
    from ..models.embed import classifier_path
    from ..models.spec import build_base
    from ..models.surgery import apply_swaps, set_submodule

    path = classifier_path(bundle.module)
    if path is None:
        raise BadInputError(f"{bundle.spec} has no Linear classifier to turn into a {dim}-d embedding head")
    if bundle.module.get_submodule(path).out_features == dim:
        return bundle
    torch.manual_seed(seed)
    kwargs = {**bundle.base.get("kwargs", {}), "num_classes": dim}
    fresh = build_base(bundle.base["source"], bundle.base["name"], kwargs)
    apply_swaps(fresh, bundle.swaps)
    set_submodule(bundle.module, path, fresh.get_submodule(path))
    theirs, mine = fresh.state_dict(), bundle.module.state_dict()
    if {k: tuple(v.shape) for k, v in theirs.items()} != {k: tuple(v.shape) for k, v in mine.items()}:
        raise BadInputError(f"{bundle.spec}: its architecture does not build a {dim}-output head at {path}")
    base = {**bundle.base, "kwargs": kwargs}
    return dataclasses.replace(bundle, base=base, classes=None, extra={**bundle.extra, "embedding_head": None})
