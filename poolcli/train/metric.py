"""Metric-learning losses and class-balanced P×K batches, from pytorch-metric-learning (Musgrave et al.,
github.com/KevinMusgrave/pytorch-metric-learning), which is well kept and has the losses, miners and samplers the
GSP papers (seeds 003/004) train with — they are used, not written again.

* Losses take L2-normalised embeddings and labels. Pair/tuple losses (contrastive, triplet, multi-similarity,
  circle, supcon, ntxent) use their library defaults; multi-similarity is paired with its miner (as in Wang et
  al., CVPR 2019). Proxy/classifier losses (proxyanchor, normsoftmax, arcface, softtriple) own parameters
  (proxies) that are trained in their own optimizer group at ``PROXY_LR_MULT`` × lr without weight decay
  (Proxy Anchor, Kim et al. 2020, trains proxies at 100× the backbone's lr).
* P×K batches: pytorch-metric-learning's ``MPerClassSampler`` (P classes × K images), drawn afresh for every
  epoch from a generator seeded by (seed, epoch) — the sampler draws from the library's module-level numpy
  generator (``common_functions.NUMPY_RANDOM``), which is set for the draw and restored — so an epoch's batches
  are a pure function of the run's seed and the epoch (what makes ``--resume`` bit-identical).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import BadInputError
from ..text import quote
from .state import step_seed

PAIR_LOSSES = {
    "contrastive": ("ContrastiveLoss", {}),
    "triplet": ("TripletMarginLoss", {}),
    "multisimilarity": ("MultiSimilarityLoss", {}),
    "circle": ("CircleLoss", {}),
    "supcon": ("SupConLoss", {}),
    "ntxent": ("NTXentLoss", {}),
}
PROXY_LOSSES = {
    "proxyanchor": ("ProxyAnchorLoss", {}),
    "normsoftmax": ("NormalizedSoftmaxLoss", {}),
    "arcface": ("ArcFaceLoss", {}),
    "softtriple": ("SoftTripleLoss", {}),
}
LOSSES = ("ce", *PAIR_LOSSES, *PROXY_LOSSES)
PROXY_LR_MULT = 100.0
DEFAULT_PER_CLASS = 4


class MetricCriterion(nn.Module):
    """loss(embeddings, labels) with the embeddings L2-normalised; a miner where the loss's paper uses one."""

    def __init__(self, name: str, num_classes: int, dim: int):
        super().__init__()
        from pytorch_metric_learning import losses, miners

        if name in PAIR_LOSSES:
            cls, kw = PAIR_LOSSES[name]
            self.loss = getattr(losses, cls)(**kw)
        elif name in PROXY_LOSSES:
            cls, kw = PROXY_LOSSES[name]
            self.loss = getattr(losses, cls)(num_classes=num_classes, embedding_size=dim, **kw)
        else:
            raise BadInputError(f"unknown --loss {quote(name)}: use one of {', '.join(LOSSES)}")
        self.miner = miners.MultiSimilarityMiner() if name == "multisimilarity" else None
        self.name = name

    def forward(self, emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        emb = torch.nn.functional.normalize(emb, dim=1)
        if self.miner is not None:
            return self.loss(emb, labels, self.miner(emb, labels))
        return self.loss(emb, labels)

    def describe(self) -> dict[str, Any]:
        return {
            "loss": type(self.loss).__name__,
            "miner": type(self.miner).__name__ if self.miner is not None else None,
            "library": "pytorch-metric-learning",
            "embeddings": "L2-normalised",
            **({"proxy_lr_mult": PROXY_LR_MULT} if self.name in PROXY_LOSSES else {}),
        }


def check_pk(labels: torch.Tensor, classes_per_batch: int, per_class: int) -> None:
    present = int(torch.unique(labels).numel())
    if per_class < 1 or classes_per_batch < 2:
        raise BadInputError(
            f"P×K batches need --per-class ≥ 1 and --classes-per-batch ≥ 2, got {per_class} and {classes_per_batch}"
        )
    if classes_per_batch > present:
        raise BadInputError(
            f"--classes-per-batch {classes_per_batch} exceeds the {present} classes of the training data; lower it"
        )


def pk_batches(labels: torch.Tensor, classes_per_batch: int, per_class: int, seed: int, epoch: int) -> list[list[int]]:
    """The batches of ``epoch``: P = ``classes_per_batch`` classes × K = ``per_class`` images each (drawn with
    replacement from classes with fewer than K images, as the library does), about one pass over the data."""
    from pytorch_metric_learning.samplers import MPerClassSampler
    from pytorch_metric_learning.utils import common_functions as c_f

    batch = classes_per_batch * per_class
    length = max(batch, (int(labels.numel()) // batch) * batch)
    previous = c_f.NUMPY_RANDOM
    c_f.NUMPY_RANDOM = np.random.RandomState(step_seed(seed, epoch, -1, "pk") % (2**32))
    try:
        order = list(MPerClassSampler(labels.numpy(), per_class, batch_size=batch, length_before_new_iter=length))
    finally:
        c_f.NUMPY_RANDOM = previous
    return [[int(i) for i in order[k : k + batch]] for k in range(0, len(order), batch)]
