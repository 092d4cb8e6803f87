"""Optimizer groups and optimizers, and the plain classification loop the fixtures were trained with
(``scripts/make_fixtures.py``); ``finetune`` runs the resumable loop of :mod:`poolcli.train.engine`."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from ..data.augment import random_shift
from ..errors import RunError
from ..progress import task


def param_groups(
    module: nn.Module,
    lr: float,
    weight_decay: float,
    pool_modules: list[nn.Module] = (),
    pool_lr_mult: float = 1.0,
    only_pools: bool = False,
) -> list[dict]:
    """Optimizer groups: the parameters of ``pool_modules`` (the operators convert swapped in, not the convs
    they follow) get lr × ``pool_lr_mult`` and no weight decay (a pooling exponent pulled towards 0 would turn
    GeM/P-pooling into a sum; GSP's prototypes are not shrunk; the cirtorch recipe); an operator part with its
    own ``lr_mult`` (P-pooling's side branch, ``ppool:lr_mult=3`` as seed 002) gets that multiplier instead;
    with ``only_pools`` everything else is frozen."""
    mult: dict[int, float] = {}
    for m in pool_modules:
        for p in m.parameters():
            mult[id(p)] = pool_lr_mult
        for sub in m.modules():
            if getattr(sub, "lr_mult", None) is not None:
                for p in sub.parameters():
                    mult[id(p)] = float(sub.lr_mult)
    pools: dict[float, list] = {}
    rest = []
    for p in module.parameters():
        if id(p) in mult:
            pools.setdefault(mult[id(p)], []).append(p)
        elif only_pools:
            p.requires_grad_(False)
        elif p.requires_grad:
            rest.append(p)
    groups = [{"params": rest, "lr": lr, "weight_decay": weight_decay}] if rest else []
    for m, params in pools.items():
        groups.append({"params": params, "lr": lr * m, "weight_decay": 0.0})
    if not groups:
        raise ValueError("no trainable parameters: nothing to fine-tune")
    return groups


def make_optimizer(
    module: nn.Module | list[dict],
    name: str,
    lr: float,
    weight_decay: float = 0.0,
    momentum: float = 0.9,
    nesterov: bool = True,
) -> torch.optim.Optimizer:
    """An optimizer over ``module``'s trainable parameters, or over given parameter groups (SGD: ``momentum``,
    ``nesterov``)."""
    params = module if isinstance(module, list) else [p for p in module.parameters() if p.requires_grad]
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        nesterov = nesterov and momentum > 0  # torch refuses Nesterov without momentum
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)
    raise ValueError(f"unknown optimizer '{name}': use adam, adamw or sgd")


def train_classifier(
    module: nn.Module,
    loader: DataLoader,
    *,
    epochs: int,
    lr: float,
    device: torch.device,
    optimizer: str = "adam",
    weight_decay: float = 0.0,
    max_shift: int = 0,
    seed: int = 0,
    cosine: bool = True,
    on_epoch: Callable[[dict], None] | None = None,
    groups: list[dict] | None = None,
    validate: Callable[[], dict] | None = None,
    extra_loss: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> list[dict]:
    """Train with cross-entropy; returns one record per epoch (loss, accuracy, seconds, and ``validate()``'s
    metrics when given). ``groups``: optimizer parameter groups (default: all trainable parameters);
    ``extra_loss(labels)``: a term added to the loss after each forward (e.g. a regulariser reading
    what the model kept from that forward)."""
    module.to(device)
    opt = make_optimizer(groups if groups is not None else module, optimizer, lr, weight_decay)
    steps = max(1, epochs * len(loader))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps) if cosine else None
    gen = torch.Generator().manual_seed(seed)
    history = []
    for epoch in range(epochs):
        module.train()
        t0 = time.perf_counter()
        loss_sum, correct, n = 0.0, 0, 0
        with task(f"train epoch {epoch + 1}/{epochs}", len(loader.dataset), unit="images") as advance:  # type: ignore[arg-type]
            for step, (x, y) in enumerate(loader, 1):
                x = random_shift(x, max_shift, gen)
                x, y = x.to(device), y.to(device)
                logits = module(x)
                loss = F.cross_entropy(logits, y)
                if extra_loss is not None:
                    loss = loss + extra_loss(y)
                if not bool(torch.isfinite(loss.detach())):
                    raise RunError(
                        f"training diverged at epoch {epoch + 1}, step {step}: the loss is "
                        f"{float(loss.detach())}; lower --lr, check the images, or start from finite weights "
                        "(nothing was written)"
                    )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if sched:
                    sched.step()
                loss_sum += float(loss.detach()) * y.numel()
                correct += int((logits.argmax(1) == y).sum())
                n += y.numel()
                advance(int(y.numel()))
        rec = {
            "epoch": epoch + 1,
            "loss": loss_sum / max(n, 1),
            "train_top1": correct / max(n, 1),
            "seconds": time.perf_counter() - t0,
        }
        if validate is not None:
            module.eval()
            rec.update(validate())
        history.append(rec)
        if on_epoch:
            on_epoch(rec)
    module.eval()
    return history
