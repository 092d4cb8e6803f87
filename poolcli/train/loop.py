"""A plain, deterministic classification training loop (single process)."""
from __future__ import annotations

import time
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from ..data.augment import random_shift


def make_optimizer(module: nn.Module, name: str, lr: float, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    params = [p for p in module.parameters() if p.requires_grad]
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay, nesterov=True)
    raise ValueError(f"unknown optimizer '{name}': use adam, adamw or sgd")


def train_classifier(module: nn.Module, loader: DataLoader, *, epochs: int, lr: float, device: torch.device,
                     optimizer: str = "adam", weight_decay: float = 0.0, max_shift: int = 0, seed: int = 0,
                     cosine: bool = True, on_epoch: Callable[[dict], None] | None = None) -> list[dict]:
    """Train with cross-entropy; returns one record per epoch (loss, accuracy, seconds)."""
    module.to(device).train()
    opt = make_optimizer(module, optimizer, lr, weight_decay)
    steps = max(1, epochs * len(loader))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps) if cosine else None
    gen = torch.Generator().manual_seed(seed)
    history = []
    for epoch in range(epochs):
        t0 = time.perf_counter()
        loss_sum, correct, n = 0.0, 0, 0
        for x, y in loader:
            x = random_shift(x, max_shift, gen)
            x, y = x.to(device), y.to(device)
            logits = module(x)
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched:
                sched.step()
            loss_sum += float(loss.detach()) * y.numel()
            correct += int((logits.argmax(1) == y).sum())
            n += y.numel()
        rec = {"epoch": epoch + 1, "loss": loss_sum / max(n, 1), "train_top1": correct / max(n, 1),
               "seconds": time.perf_counter() - t0}
        history.append(rec)
        if on_epoch:
            on_epoch(rec)
    module.eval()
    return history
