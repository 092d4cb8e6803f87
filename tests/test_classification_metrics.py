"""Classification metrics beyond top-1: ECE against Guo et al.'s definition written out, the confusion matrix
and per-class/macro accuracy against direct counts, NLL against torch's cross-entropy."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from poolcli.metrics.classification import ECE_BINS, Classification


def _ece_literal(probs: torch.Tensor, labels: torch.Tensor, bins: int = ECE_BINS) -> float:
    conf, pred = probs.max(1)
    total = 0.0
    for i in range(bins):
        m = (conf > i / bins) & (conf <= (i + 1) / bins)
        if m.any():
            acc = float((pred[m] == labels[m]).double().mean())
            total += float(m.sum()) / len(labels) * abs(acc - float(conf[m].double().mean()))
    return total


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_streamed_metrics_equal_direct_computation(seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(500, 7, generator=g) * 3
    labels = torch.randint(0, 7, (500,), generator=g)
    labels[labels == 6] = 5  # class 6 has no images: its accuracy is undefined, left out of the macro mean
    acc = Classification()
    for part in torch.arange(500).split(64):
        acc.update(logits[part], labels[part])
    r = acc.result()
    pred = logits.argmax(1)
    assert r["ece"] == pytest.approx(_ece_literal(logits.softmax(1), labels), abs=1e-9)
    assert r["nll"] == pytest.approx(float(F.cross_entropy(logits, labels)), rel=1e-6)
    confusion = torch.zeros(7, 7, dtype=torch.long)
    for t, p in zip(labels.tolist(), pred.tolist()):
        confusion[t, p] += 1
    assert r["confusion"] == confusion.tolist()
    per = [float((pred[labels == c] == c).double().mean()) if (labels == c).any() else None for c in range(7)]
    assert r["per_class_accuracy"] == pytest.approx(per) and r["per_class_accuracy"][6] is None
    assert r["macro_accuracy"] == pytest.approx(sum(per[:6]) / 6)
    assert r["top1"] == pytest.approx(float((pred == labels).double().mean()))


def test_perfectly_calibrated_and_overconfident_cases():
    # every prediction right with confidence 1: ECE 0; every prediction wrong with confidence ~1: ECE ~1
    logits = torch.tensor([[20.0, 0.0], [0.0, 20.0]] * 10)
    right = Classification()
    right.update(logits, torch.tensor([0, 1] * 10))
    wrong = Classification()
    wrong.update(logits, torch.tensor([1, 0] * 10))
    assert right.result()["ece"] == pytest.approx(0.0, abs=1e-8)
    assert wrong.result()["ece"] == pytest.approx(1.0, abs=1e-8)
