"""Paired comparisons: McNemar's exact test by hand, the bootstrap interval against scipy.stats.bootstrap
(percentile method, paired), and the noise verdict on identical and clearly different models."""

from __future__ import annotations

import json
import math

import pytest
import torch

from poolcli.metrics.paired import mcnemar_exact, paired_bootstrap

from .conftest import CNN, ROOT


def test_mcnemar_exact_by_hand():
    a = torch.tensor([1] * 10 + [0] * 2 + [1] * 30, dtype=torch.bool)  # 10 only-a, 2 only-b, 30 both right
    b = torch.tensor([0] * 10 + [1] * 2 + [1] * 30, dtype=torch.bool)
    r = mcnemar_exact(a, b)
    assert (r["only_a_right"], r["only_b_right"]) == (10, 2)
    assert r["p_value"] == pytest.approx(2 * (1 + 12 + 66) / 4096)
    assert mcnemar_exact(a, a)["p_value"] == 1.0


def test_bootstrap_interval_matches_scipy():
    scipy_stats = pytest.importorskip("scipy.stats")
    g = torch.Generator().manual_seed(0)
    a = (torch.rand(400, generator=g) < 0.8).double()
    b = (torch.rand(400, generator=g) < 0.7).double()
    ours = paired_bootstrap(a, b, seed=1)
    ref = scipy_stats.bootstrap(
        (a.numpy(), b.numpy()),
        lambda x, y: x.mean() - y.mean(),
        paired=True,
        vectorized=False,
        n_resamples=10_000,
        method="percentile",
        random_state=2,
    ).confidence_interval
    assert ours["difference"] == pytest.approx(float(a.mean() - b.mean()))
    assert ours["ci"][0] == pytest.approx(ref.low, abs=0.01) and ours["ci"][1] == pytest.approx(ref.high, abs=0.01)
    assert not ours["noise"]  # 10 points apart on 400 items: the interval excludes 0
    same = paired_bootstrap(a, a)
    assert same["ci"] == [0.0, 0.0] and same["noise"]


def test_evaluate_compares_every_pair_on_the_same_images(cli):
    resnet = ROOT / "fixtures" / "digits-resnet.safetensors"
    code, out, err = cli("evaluate", CNN, resnet, "--metrics", "classification,retrieval", "--json")
    assert code == 0, err
    doc = json.loads(out)
    (pair,) = doc["comparisons"]
    assert pair["a"].endswith("digits-cnn.safetensors") and pair["b"].endswith("digits-resnet.safetensors")
    top1 = pair["top1"]
    t = [r["top1"] for r in doc["results"]]
    assert top1["difference"] == pytest.approx(t[0] - t[1]) and top1["ci"][0] <= top1["difference"] <= top1["ci"][1]
    assert 0 <= top1["mcnemar"]["p_value"] <= 1 and not math.isnan(top1["mcnemar"]["p_value"])
    assert {"retrieval.map_at_r", "retrieval.precision_at_1"} <= set(pair)
    assert "paired" in err  # the table on stderr
