"""The fine-tune loop: resumable at any step, bit-identical on CPU for the same seed.

Everything random is a function of (seed, epoch, step): the order of epoch e is ``randperm`` from a generator
seeded by (seed, e), and before step s the global torch generator (dropout, stochastic depth) and the
augmentation's generator are re-seeded from (seed, e, s). The learning rate is a pure function of the position
(:mod:`poolcli.train.schedule`). So a run that continues from a state saved after any step replays exactly
the steps the uninterrupted run took, and the state needs no generator states.

The state is written atomically at the end of every epoch and on Ctrl-C/SIGTERM (mid-epoch: the step, the
epoch's running sums); a kill -9 loses at most the current epoch, which the resumed run recomputes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..data.augment import crop_flip, random_shift
from ..errors import RunError
from ..progress import note, task
from .schedule import Schedule
from .state import save_state, step_seed


@dataclasses.dataclass
class Setup:
    epochs: int
    batch_size: int
    seed: int
    device: torch.device
    workers: int = 0
    label_smoothing: float = 0.0
    clip_grad: float | None = None
    drop_last: bool = True
    only: list[nn.Module] | None = None  # train only these modules: the rest stays in eval mode (frozen BN statistics)
    lr: float | None = None  # the base lr (what the log's lr column scales)
    rank: int = 0
    world: int = 1  # torchrun: each global batch is split over the ranks, gradients averaged
    augment: tuple[str, int] = ("none", 0)  # batch-level: ("shift", N) or ("crop-flip", PAD) (data.augment)
    fill: torch.Tensor | None = None  # crop-flip's padding per channel (black in the model's normalisation)
    amp: str | None = None  # "bf16" | "fp16": autocast of the forward and loss (fp16 with a gradient scaler)
    channels_last: bool = False
    ema: nn.Module | None = None  # timm's ModelEmaV3: updated after every step, validated and kept at the end


@dataclasses.dataclass
class Progress:
    """Where a run is: the next step to take (``epoch``, ``step``), the running sums of the current epoch and
    the finished epochs' records."""

    epoch: int = 0
    step: int = 0
    sums: tuple[float, int, int] = (0.0, 0, 0)  # Σ loss·batch, correct, images
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def meta(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "step": self.step, "sums": list(self.sums), "history": self.history}

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> Progress:
        loss, correct, n = meta["sums"]
        return cls(int(meta["epoch"]), int(meta["step"]), (float(loss), int(correct), int(n)), list(meta["history"]))


def steps_per_epoch(n: int, batch_size: int, drop_last: bool) -> int:
    return max(1, n // batch_size) if drop_last and n > batch_size else math.ceil(n / batch_size)


def epoch_batches(n: int, setup: Setup, epoch: int) -> list[list[int]]:
    """The batches of ``epoch``: a permutation seeded by (seed, epoch), cut into batches."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(step_seed(setup.seed, epoch, -1, "order")))
    spe = steps_per_epoch(n, setup.batch_size, setup.drop_last)
    return [order[i * setup.batch_size : (i + 1) * setup.batch_size].tolist() for i in range(spe)]


def train(
    module: nn.Module,
    dataset: Dataset,
    optimizer: torch.optim.Optimizer,
    base_lrs: list[float],
    schedule: Schedule,
    setup: Setup,
    *,
    progress: Progress | None = None,
    extra_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    extra_modules: list[nn.Module] = (),
    validate: Callable[[], dict[str, float]] | None = None,
    state_path: Any = None,
    state_meta: dict[str, Any] | None = None,
    on_epoch: Callable[[dict[str, Any], Progress], None] | None = None,
    step_loss: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]] | None = None,
    batches_of: Callable[[int], list[list[int]]] | None = None,
    metric: tuple[str, bool] = ("val_top1", True),
) -> Progress:
    """Train from ``progress`` (default: the start) to the end; returns the final progress. ``extra_loss(loss, y)``
    combines the batch's loss with a regulariser read from the forward (GSP's ZSR). ``state_path``: where
    the training state goes after every epoch and on interruption (``state_meta``, which ``on_epoch`` may update,
    is written with it). ``step_loss(x, y)``: the loss of a batch and the logits for the training accuracy (None:
    not a classifier's); default cross-entropy with label smoothing. ``batches_of(epoch)``: the epoch's batches
    of dataset indices (a pure function of the epoch); default a seeded permutation. ``metric``: the record's key
    the plateau schedule watches and whether higher is better (the training loss when the key is missing)."""
    p = progress or Progress()
    n = len(dataset)  # type: ignore[arg-type]
    batches_of = batches_of or (lambda e: epoch_batches(n, setup, e))
    spe = len(batches_of(0))
    module.to(setup.device)

    def cross_entropy(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        logits = module(x)
        return F.cross_entropy(logits, y, label_smoothing=setup.label_smoothing), logits

    step_loss = step_loss or cross_entropy
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(setup.amp or "")
    scaler = torch.amp.GradScaler(setup.device.type) if setup.amp == "fp16" else None
    if scaler is not None and state_meta is not None and state_meta.get("scaler"):
        scaler.load_state_dict(state_meta["scaler"])
    if setup.channels_last:
        module.to(memory_format=torch.channels_last)

    distributed = setup.world > 1
    if distributed:
        _broadcast(module, list(extra_modules))  # every rank starts from rank 0's tensors

    def save() -> None:
        if state_path is not None and setup.rank == 0:
            save_state(state_path, module, optimizer, list(extra_modules), {**(state_meta or {}), "progress": p.meta()})

    while p.epoch < setup.epochs:
        epoch = p.epoch
        if setup.only is None:
            module.train()
        else:  # everything else frozen, BatchNorm statistics and dropout included
            module.eval()
            for m in setup.only:
                m.train()
        t0 = time.perf_counter()
        every = batches_of(epoch)
        if hasattr(dataset, "set_epoch"):  # per-image augmentations seeded by (seed, epoch, position)
            dataset.set_epoch(epoch)
        mine = [b[setup.rank :: setup.world] for b in every[p.step :]]  # this rank's part of each global batch
        loader = DataLoader(dataset, batch_sampler=mine, num_workers=setup.workers)
        loss_sum, correct, seen = p.sums
        done = sum(len(b) for b in every[: p.step])
        label = f"train epoch {epoch + 1}/{setup.epochs}"
        try:
            with task(label, sum(len(b) for b in every), unit="images") as advance:
                if done:
                    advance(done)
                for step, (x, y) in enumerate(loader, p.step):
                    with _atomic():  # a signal lands between steps, never inside one
                        torch.manual_seed(step_seed(setup.seed, epoch, step, "torch"))
                        gen = torch.Generator().manual_seed(step_seed(setup.seed, epoch, step, "augment"))
                        total = len(every[step])
                        part = (total, setup.rank, setup.world) if distributed else None
                        kind, amount = setup.augment
                        if kind == "shift":
                            x = random_shift(x, amount, gen, part)
                        elif kind == "crop-flip":
                            x = crop_flip(x, amount, setup.fill, gen, part)
                        x, y = x.to(setup.device), y.to(setup.device)
                        if setup.channels_last:
                            x = x.contiguous(memory_format=torch.channels_last)
                        f = schedule.factor(epoch, step, spe, setup.epochs)
                        for g, base in zip(optimizer.param_groups, base_lrs):
                            g["lr"] = base * f
                        with torch.autocast(setup.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                            loss, logits = step_loss(x, y)
                            if extra_loss is not None:
                                loss = extra_loss(loss, y)
                        loss = loss.float()
                        if not bool(torch.isfinite(loss.detach())):
                            raise RunError(
                                f"training diverged at epoch {epoch + 1}, step {step + 1}: the loss is "
                                f"{float(loss.detach())}; lower --lr, check the images, or start from finite weights "
                                "(nothing was written)"
                            )
                        optimizer.zero_grad(set_to_none=True)
                        weighted = loss * (y.numel() * setup.world / total) if distributed else loss
                        # the global batch's mean under torchrun: this rank's mean weighted by its share
                        (scaler.scale(weighted) if scaler is not None else weighted).backward()
                        if distributed:
                            _average_gradients(optimizer)
                        if scaler is not None:
                            scaler.unscale_(optimizer)
                        if setup.clip_grad is not None:
                            params = [q for g in optimizer.param_groups for q in g["params"] if q.grad is not None]
                            torch.nn.utils.clip_grad_norm_(params, setup.clip_grad)
                        if scaler is not None:
                            scaler.step(optimizer)
                            scaler.update()
                        else:
                            optimizer.step()
                        if distributed:
                            _broadcast_buffers(module)  # BatchNorm statistics: rank 0's (DDP's broadcast_buffers)
                        if setup.ema is not None:
                            setup.ema.update(module, step=epoch * spe + step)
                        loss_sum += float(loss.detach()) * y.numel()
                        correct += int((logits.argmax(1) == y).sum()) if logits is not None else 0
                        seen += int(y.numel())
                        p.step, p.sums = step + 1, (loss_sum, correct, seen)
                        advance(int(y.numel()) * setup.world)
                        note(f"loss {loss_sum / max(seen, 1):.4f}")
        except KeyboardInterrupt:
            if scaler is not None and state_meta is not None:
                state_meta["scaler"] = dict(scaler.state_dict())
            if not distributed:  # Ctrl-C / SIGTERM: the state after the last finished step (under torchrun the
                save()  # epoch's sums live on every rank: the interrupted epoch is recomputed from the last state)
            raise
        if distributed:  # the whole epoch's sums over the ranks
            loss_sum, correct, seen = _sum_over_ranks(loss_sum, correct, seen)
        rec: dict[str, Any] = {
            "epoch": epoch + 1,
            "loss": loss_sum / max(seen, 1),
            **({"train_top1": correct / max(seen, 1)} if step_loss is cross_entropy else {}),
            "lr": (setup.lr or base_lrs[0]) * schedule.factor(epoch, spe - 1, spe, setup.epochs),
        }
        p.history.append(rec)
        p.epoch, p.step, p.sums = epoch + 1, 0, (0.0, 0, 0)
        with _ema_weights(module, setup.ema):  # with --ema the averaged weights are validated and kept as best
            if validate is not None:
                module.eval()
                rec.update(validate())
            watched, higher = (rec[metric[0]], metric[1]) if metric[0] in rec else (rec["loss"], False)
            schedule.end_epoch(watched, higher)
            if on_epoch:  # before the state: what it writes (best model, log) is then never ahead of the state
                on_epoch({**rec, "seconds": time.perf_counter() - t0}, p)
        if state_meta is not None:
            state_meta["schedule_state"] = schedule.state()
            if scaler is not None:
                state_meta["scaler"] = {
                    k: (float(v) if isinstance(v, float) else v) for k, v in scaler.state_dict().items()
                }
        save()
    if setup.ema is not None:  # the result is the averaged model
        module.load_state_dict(setup.ema.module.state_dict())
    module.eval()
    return p


_DEFERRED = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def _atomic():
    """Ctrl-C / SIGTERM held back for the duration of a training step and delivered after it, so an interrupted
    run's state is always that of a step boundary (a signal inside a forward would already have moved the
    BatchNorm statistics, one inside Adam's per-parameter loop half the weights)."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _DEFERRED)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


@contextlib.contextmanager
def _ema_weights(module: nn.Module, ema: nn.Module | None):
    """The EMA's weights in ``module`` for the duration (validation, best checkpoint), the trained ones after."""
    if ema is None:
        yield
        return
    trained = {k: v.clone() for k, v in module.state_dict().items()}
    module.load_state_dict(ema.module.state_dict())
    try:
        yield
    finally:
        module.load_state_dict(trained)


def _average_gradients(optimizer: torch.optim.Optimizer) -> None:
    """All-reduce the gradients, flattened into one buffer, and average them over the ranks (what DDP does,
    without overlapping it with the backward: the model stays the bare module, so the forward hooks that read
    embeddings and GSP's attributes, and the per-step seeding, see it as in one process)."""
    import torch.distributed as dist

    grads = [q.grad for g in optimizer.param_groups for q in g["params"] if q.grad is not None]
    if not grads:
        return
    flat = torch.cat([t.reshape(-1) for t in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for t in grads:
        t.copy_(flat[offset : offset + t.numel()].view_as(t))
        offset += t.numel()


def _broadcast_buffers(module: nn.Module) -> None:
    import torch.distributed as dist

    for b in module.buffers():
        dist.broadcast(b, 0)


def _broadcast(module: nn.Module, extra: list[nn.Module]) -> None:
    import torch.distributed as dist

    for m in [module, *extra]:
        for t in [*m.parameters(), *m.buffers()]:
            dist.broadcast(t.data, 0)


def _sum_over_ranks(loss_sum: float, correct: int, seen: int) -> tuple[float, int, int]:
    import torch.distributed as dist

    t = torch.tensor([loss_sum, float(correct), float(seen)], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t[0]), int(t[1]), int(t[2])
