"""Classification metrics of a classifier on a dataset, streamed: top-1/top-5, mean cross-entropy (NLL),
per-class and macro accuracy, the confusion matrix, expected calibration error and throughput.

ECE (Guo et al., "On Calibration of Modern Neural Networks", ICML 2017): the max softmax probability of
each image is binned into 15 equal-width bins of (0, 1]; ECE = Σ_b (|B_b| / n) · |acc(B_b) − conf(B_b)|.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import BadInputError, RunError

METRIC_DEFINITIONS = {
    "top1": "fraction of images whose highest logit is the true class",
    "top5": "fraction of images whose true class is among the 5 highest logits (reported when the model has "
    "more than 5 outputs)",
    "loss": "mean softmax cross-entropy (natural log) over all images",
    "images_per_s": "images / wall-clock seconds of model forward passes (data loading excluded), batch as given",
    "nll": "the same as loss: mean negative log-likelihood of the true class",
    "per_class_accuracy": "top-1 accuracy over the images of each class (null for a class without images)",
    "macro_accuracy": "mean of the per-class accuracies over the classes that have images",
    "confusion": "confusion[true][predicted] image counts",
    "ece": "expected calibration error, 15 equal-width bins of the max softmax probability (Guo et al. 2017)",
}
ECE_BINS = 15


class Classification:
    """Streams logits into top-1/top-5 counts and the summed cross-entropy."""

    def __init__(self) -> None:
        self.n = self.correct1 = self.correct5 = self.outputs = 0
        self.loss_sum = 0.0
        self.confusion: torch.Tensor | None = None  # [classes, outputs] int64
        self.bins = torch.zeros(3, ECE_BINS, dtype=torch.float64)  # count, Σ confidence, Σ correct per bin
        self.correct: list[torch.Tensor] = []  # per image, in order: for paired comparisons of models
        self.labels: list[torch.Tensor] = []

    def update(self, logits: torch.Tensor, y: torch.Tensor) -> None:
        if logits.dim() != 2:
            raise BadInputError(
                f"model output has shape {list(logits.shape)}; a classifier must output [batch, classes]"
            )
        if int(y.max()) >= logits.shape[1]:
            raise BadInputError(
                f"dataset label {int(y.max())} is out of range for a model with {logits.shape[1]} outputs; pick "
                "matching --classes or model"
            )
        self.outputs = int(logits.shape[1])
        logits = logits.float()
        self.loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hit = (top[:, 0] == y).cpu()
        self.correct.append(hit)
        self.labels.append(y.cpu())
        self.correct1 += int(hit.sum())
        self.correct5 += int((top == y[:, None]).any(dim=1).sum())
        self.n += int(y.numel())
        if self.confusion is None:
            self.confusion = torch.zeros(self.outputs, self.outputs, dtype=torch.long)
        pairs = (y.cpu() * self.outputs + top[:, 0].cpu()).long()
        self.confusion += torch.bincount(pairs, minlength=self.outputs**2).view(self.outputs, self.outputs)
        conf = logits.softmax(1).amax(1).double().cpu()
        b = (conf * ECE_BINS).ceil().long().clamp(1, ECE_BINS) - 1  # bin (i/15, (i+1)/15]
        self.bins[0].index_add_(0, b, torch.ones_like(conf))
        self.bins[1].index_add_(0, b, conf)
        self.bins[2].index_add_(0, b, hit.double())

    def result(self) -> dict:
        out: dict = {"top1": self.correct1 / self.n, "loss": self.loss_sum / self.n, "nll": self.loss_sum / self.n}
        if self.outputs > 5:  # with 5 or fewer outputs the top 5 hold every class: 100% by construction
            out["top5"] = self.correct5 / self.n
        per_class_n = self.confusion.sum(1)
        per_class = [
            (int(self.confusion[c, c]) / int(k)) if int(k) else None for c, k in enumerate(per_class_n.tolist())
        ]
        present = [a for a in per_class if a is not None]
        out["per_class_accuracy"] = per_class
        out["macro_accuracy"] = sum(present) / len(present)
        out["confusion"] = self.confusion.tolist()
        count, conf, hits = self.bins
        used = count > 0
        out["ece"] = float(((conf[used] - hits[used]).abs()).sum() / self.n)
        return out


@torch.inference_mode()
def run_pass(
    module: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    device: torch.device,
    consumers: Sequence[Callable[[torch.Tensor, torch.Tensor], None]],
    progress: Callable[[int], None] | None = None,
) -> dict[str, float]:
    """One pass of ``module`` over ``batches``: every consumer gets each batch's (logits, labels) on the
    device; returns the image count and the forward throughput."""
    module.eval().to(device)
    n = 0
    fwd_s = 0.0
    for x, y in batches:
        x, y = x.to(device, non_blocking=True), y.to(device)
        t0 = time.perf_counter()
        logits = module(x)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        fwd_s += time.perf_counter() - t0
        if not bool(torch.isfinite(logits).all()):
            raise RunError(
                f"the model's outputs are NaN/inf on images {n}..{n + int(y.numel()) - 1} of the "
                "selection: check the images (values must be in [0, 1] or 0-255) and the model's weights; "
                "no accuracy is reported from non-finite outputs"
            )
        for consume in consumers:
            consume(logits, y)
        n += int(y.numel())
        if progress:
            progress(int(y.numel()))
    if n == 0:
        raise BadInputError("the dataset yielded no images; widen the selection")
    return {"n": n, "images_per_s": n / fwd_s if fwd_s > 0 else float("inf"), "forward_seconds": fwd_s}


def evaluate_classifier(
    module: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    device: torch.device,
    progress: Callable[[int], None] | None = None,
) -> dict[str, float]:
    acc = Classification()
    info = run_pass(module, batches, device, [acc.update], progress)
    return {**info, **acc.result()}
