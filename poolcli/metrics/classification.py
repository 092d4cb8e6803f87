"""Top-1/top-5 accuracy, mean cross-entropy and throughput of a classifier on a dataset."""

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
}


class Classification:
    """Streams logits into top-1/top-5 counts and the summed cross-entropy."""

    def __init__(self) -> None:
        self.n = self.correct1 = self.correct5 = self.outputs = 0
        self.loss_sum = 0.0

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
        self.loss_sum += float(F.cross_entropy(logits.float(), y, reduction="sum"))
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        self.correct1 += int((top[:, 0] == y).sum())
        self.correct5 += int((top == y[:, None]).any(dim=1).sum())
        self.n += int(y.numel())

    def result(self) -> dict[str, float]:
        out = {"top1": self.correct1 / self.n, "loss": self.loss_sum / self.n}
        if self.outputs > 5:  # with 5 or fewer outputs the top 5 hold every class: 100% by construction
            out["top5"] = self.correct5 / self.n
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
