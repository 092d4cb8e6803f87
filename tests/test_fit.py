"""Scatter statistics and the generalized eigen solvers against independent float64 references."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from poolcli.learn.eigen import locality_penalty, solve_exact, solve_lobpcg
from poolcli.learn.pooling import average_vectors, fit_pooling, quadratic
from poolcli.learn.stats import ScatterStats


def _maps(seed=0, n=60, c=6, h=4, w=4, q=3):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % q
    means = torch.randn(q, c, h, w, generator=g, dtype=torch.float64)
    x = means[labels] + 0.7 * torch.randn(n, c, h, w, generator=g, dtype=torch.float64) + 3.0
    return x, labels


def direct_scatter(x, labels, scale):
    """Seed 001 eq. (11)-(12), computed from all maps in memory with centred within-class terms."""
    X = (x / scale[None, :, None, None]).flatten(2).transpose(1, 2)  # [K, N, C]
    classes = labels.unique()
    means = torch.stack([X[labels == q].mean(0) for q in classes])
    centre = means.mean(0)
    A = sum((m - centre) @ (m - centre).t() for m in means)
    B = sum(
        sum((X[k] - means[i]) @ (X[k] - means[i]).t() for k in (labels == q).nonzero().flatten())
        / int((labels == q).sum())
        for i, q in enumerate(classes)
    )
    return A, B


def _stream(x, labels, batches, scale, precision="float64", mean=None):
    mean = torch.zeros(x.shape[1]) if mean is None else mean
    st = ScatterStats.empty(torch.bincount(labels), tuple(x.shape[-2:]), mean, scale, precision)
    for idx in batches:
        st.update(x[idx], labels[idx])
    return st


def _rel(a, b):
    return float((a - b).norm() / b.norm())


def test_streaming_equals_direct_computation():
    x, labels = _maps()
    scale = x.std((0, 2, 3))
    st = _stream(x, labels, torch.arange(60).split(7), scale)
    D, B = st.scatter()
    A_ref, B_ref = direct_scatter(x, labels, scale)
    assert torch.allclose(D @ D.t(), A_ref, rtol=1e-10, atol=1e-10)
    assert torch.allclose(B, B_ref, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("offset", [0.0, 50.0])
def test_mixed_precision_statistics_match_float64(offset):
    """Centred float32 batch products summed in float64: A and B within 1e-6 of the float64 reference, also
    for maps far from zero (centring by the channel mean keeps the cancellation in B out of float32), and on
    a grid of more than one strip (144 > 128 locations: the mirrored lower triangle is checked too)."""
    g = torch.Generator().manual_seed(3)
    labels = torch.arange(48) % 4
    x = torch.rand(48, 5, 12, 12, generator=g) + offset + labels[:, None, None, None] * 0.1  # float32, as maps are
    scale, mean = x.double().std((0, 2, 3)), x.double().mean((0, 2, 3))
    A_ref, B_ref = direct_scatter(x.double(), labels, scale)
    D, B = _stream(x, labels, torch.arange(48).split(10), scale, "mixed", mean).scatter()
    assert _rel(D @ D.t(), A_ref) < 1e-6 and _rel(B, B_ref) < 1e-6
    assert torch.equal(B, B.t())


def test_shards_merge_to_one_run():
    x, labels = _maps(1)
    scale = torch.ones(6, dtype=torch.float64)
    whole = _stream(x, labels, [torch.arange(60)], scale)
    a = _stream(x, labels, [torch.arange(0, 60, 2)], scale)
    b = _stream(x, labels, [torch.arange(1, 60, 2)], scale)
    merged = a.merge(b)
    assert torch.equal(merged.counts, whole.counts)
    assert torch.allclose(merged.gram, whole.gram, rtol=1e-14) and torch.allclose(
        merged.class_sums, whole.class_sums, rtol=1e-14
    )
    with pytest.raises(ValueError, match="incomplete"):
        a.scatter()


def _problem(n_side=6, seed=0):
    x, labels = _maps(seed, n=90, c=5, h=n_side, w=n_side, q=4)
    st = _stream(x, labels, [torch.arange(90)], x.std((0, 2, 3)))
    D, B = st.scatter()
    return D, B / torch.diagonal(B).mean(), D / torch.diagonal(B).mean().sqrt()


@pytest.mark.parametrize("alpha", [0.05, 1.0, 25.0])
@pytest.mark.parametrize("solver", ["exact", "lobpcg"])
def test_eigenvectors_match_scipy_and_beat_random(alpha, solver):
    D0, B, D = _problem()
    A = D @ D.t()
    pen = locality_penalty((6, 6), (3, 3))
    res = solve_exact(A, B, pen, alpha, 2) if solver == "exact" else solve_lobpcg(D, B, pen, alpha, 2, tol=1e-11)
    rng = np.random.default_rng(0)
    rand = torch.from_numpy(rng.standard_normal((1000, 36)))
    avg = average_vectors((6, 6), (3, 3))
    for m in range(9):
        G = B + alpha * torch.diag(pen[m])
        w, v = scipy.linalg.eigh(A.numpy(), G.numpy())
        ref = torch.from_numpy(v[:, -1])
        p = res.vectors[m, :, 0]
        cos = abs(float(p @ G @ ref)) / float((p @ G @ p).sqrt() * (ref @ G @ ref).sqrt())
        assert cos >= 1 - 1e-10
        assert abs(float(res.values[m, 0]) - w[-1]) <= 1e-9 * abs(w[-1])
        rq = float(quadratic(A, p[None]) / quadratic(G, p[None]))
        assert rq >= float((quadratic(A, rand) / quadratic(G, rand)).max())
        assert rq >= float(quadratic(A, avg[m : m + 1]) / quadratic(G, avg[m : m + 1]))


def test_fit_pooling_normalisation_sign_and_report():
    D0, B, D = _problem(8)
    for norm in ("l1", "l2"):
        fit = fit_pooling(D0, B, (8, 8), alpha=1.0, k=2, norm=norm)
        size = fit.P.abs().sum(-1) if norm == "l1" else fit.P.norm(dim=-1)
        assert torch.allclose(size, torch.ones_like(size), atol=1e-6)
        assert (fit.P.sum(-1) >= 0).all()
        assert fit.P.shape == (2, 16, 64) and fit.out_hw == (4, 4)
    exact = fit_pooling(D0, B, (8, 8), alpha=1.0, solver="exact")
    fast = fit_pooling(D0, B, (8, 8), alpha=1.0, solver="lobpcg")
    assert torch.allclose(exact.P[0].abs(), fast.P[0].abs(), atol=1e-5)


def test_singular_b_gets_a_ridge():
    D = torch.randn(16, 3, dtype=torch.float64)
    Z = torch.randn(16, 4, dtype=torch.float64)
    fit = fit_pooling(D, Z @ Z.t(), (4, 4), alpha=0.0, k=1)
    assert fit.ridge > 0 and torch.isfinite(fit.P).all()
