"""Numerical defects found by independent float64 references: each held to a reference here."""

from __future__ import annotations

import itertools
import math

import pytest
import scipy.linalg
import torch

from poolcli.learn.pooling import fit_pooling, needs_ridge
from poolcli.ops import native
from poolcli.ops.gsp import gsp_pool, transport_costs
from poolcli.ops.ppool import p_pool2d

IMPLS = ["torch"] + (["native"] if native.load("ppool") is not None else [])


def _ppool_reference(x: torch.Tensor, alpha: float, k: int, s: int) -> torch.Tensor:
    """Σ x^(α+1) / Σ x^α per window, in float64 with Python's 0**α (0**0 = 1): the published formula."""
    b, c, h, w = x.shape
    ho, wo = (h - k) // s + 1, (w - k) // s + 1
    out = torch.zeros(b, c, ho, wo, dtype=torch.float64)
    for bi, ci, i, j in itertools.product(range(b), range(c), range(ho), range(wo)):
        win = [float(v) for v in x[bi, ci, i * s : i * s + k, j * s : j * s + k].flatten()]
        den = sum(v**alpha for v in win)
        out[bi, ci, i, j] = sum(v ** (alpha + 1) for v in win) / den if den > 0 else 0.0
    return out


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ppool_exact_zeros_get_weight_zero_to_the_alpha(impl, dtype):
    x = torch.tensor([[[[0.0, 0.0], [0.0, 1.0]]]], dtype=dtype)
    assert float(p_pool2d(x, 0.01, 2, impl=impl)) == pytest.approx(1.0, abs=1e-6)  # was 0.44 (fp32), 0.9975 (fp64)
    assert float(p_pool2d(x, 0.0, 2, impl=impl)) == pytest.approx(0.25, abs=1e-7)  # α = 0: average, zeros count
    assert float(p_pool2d(torch.zeros(1, 1, 2, 2, dtype=dtype), 5.0, 2, impl=impl)) == 0.0  # a window of zeros
    # ReLU maps (many exact zeros) against the formula in float64, several α
    g = torch.Generator().manual_seed(0)
    relu = torch.relu(torch.randn(2, 3, 8, 8, generator=g, dtype=torch.float64))
    for alpha in (0.0, 0.01, 0.5, 3.0, 20.0):
        got = p_pool2d(relu.to(dtype), alpha, 2, impl=impl).double()
        tol = 1e-12 if dtype == torch.float64 else 2e-6
        assert torch.allclose(got, _ppool_reference(relu, alpha, 2, 2), rtol=tol, atol=tol), alpha


@pytest.mark.parametrize("impl", IMPLS)
def test_ppool_gradients_stay_finite_at_zeros(impl):
    x = torch.relu(torch.randn(1, 2, 6, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    x.requires_grad_(True)
    a = torch.full((1, 2, 3, 3), 0.3, dtype=torch.float64, requires_grad=True)
    p_pool2d(x, a, 2, impl=impl).sum().backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(a.grad).all()
    assert (x.grad[x.detach() == 0] == 0).all()  # p_i = 0 at an exact zero for α > 0


@pytest.mark.parametrize("impl", IMPLS)
def test_ppool_padding_beyond_half_the_kernel_is_one_clear_error(impl):
    with pytest.raises(ValueError, match="padding ≤ kernel/2"):
        p_pool2d(torch.rand(1, 1, 8, 8), 1.0, kernel_size=2, stride=2, padding=2, impl=impl)


def test_gsp_costs_are_accurate_near_a_prototype():
    g = torch.Generator().manual_seed(0)
    f = torch.randn(2, 16, 3, 3, generator=g) * 0.2
    protos = torch.randn(8, 16, generator=g) * 0.2
    protos[0] = f[0, :, 1, 1]  # a feature equal to a prototype
    cost = transport_costs(f.flatten(2).transpose(1, 2), protos)
    assert float(cost[0, 4, 0]) == 0.0  # was ~1e-3 from ‖a‖²−2a·b+‖b‖² cancellation (1e-6 under the root)
    for gamma in (50.0, 500.0):
        z32 = gsp_pool(f, protos, 0.3, gamma)[1].double()
        z64 = gsp_pool(f.double(), protos.double(), 0.3, gamma)[1]
        assert (z32 - z64).abs().max() < 1e-5, gamma  # was 1.8e-3 at γ=50 and 2e-2 at γ=500
    x = f.clone().requires_grad_(True)
    gsp_pool(x, protos, 0.3, 50.0)[0].sum().backward()
    assert torch.isfinite(x.grad).all()


def test_ridge_is_decided_by_the_spectrum_for_every_draw():
    """An exactly rank-deficient B (more locations than images) gets the ridge every time, whatever the rounding."""
    n = 36
    for seed in range(8):
        g = torch.Generator().manual_seed(seed)
        X = torch.randn(n, 20, generator=g, dtype=torch.float64)  # rank 20 < 36
        B = X @ X.t()
        assert needs_ridge(B) > 0, seed
        D = torch.randn(n, 3, generator=g, dtype=torch.float64)
        fit = fit_pooling(D, B, (6, 6), stride=2, alpha=1.0, k=2, solver="exact")
        assert torch.isfinite(fit.eigenvalues).all() and fit.eigenvalues.abs().max() < 1e8
        assert (fit.ratio[torch.isfinite(fit.ratio)] >= 0).all()
    full = torch.randn(n, 80, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    assert needs_ridge(full @ full.t()) == 0.0
    assert needs_ridge(full @ full.t(), rank_bound=n - 1) > 0  # fewer samples than locations: no factorisation


@pytest.mark.parametrize("cond,singular", [(1e6, False), (1e8, False), (1e10, True), (1e14, True)])
def test_ridge_threshold_is_the_condition_number(cond, singular):
    """B with a known spectrum (geometric from 1 down to 1/cond, random eigenbasis): the ridge exactly when
    the condition number passes 1e9, checked against scipy's eigenvalues of the same matrix."""
    n = 64
    Q = torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(1), dtype=torch.float64))[0]
    lam = torch.logspace(0, -math.log10(cond), n, dtype=torch.float64)
    B = (Q * lam) @ Q.t()
    B = 0.5 * (B + B.t())
    ref = scipy.linalg.eigvalsh(B.numpy())
    assert (ref[0] <= ref[-1] / 1e9) == singular
    assert (needs_ridge(B) > 0) == singular


def test_blank_border_cells_are_left_out_of_the_gain_not_divided_by_zero():
    """Cells that see only constant input have zero within-class scatter: their ratio is undefined (was −3.6e15)."""
    g = torch.Generator().manual_seed(0)
    h = w = 8
    X = torch.zeros(h * w, 40, dtype=torch.float64)
    inner = torch.zeros(h, w, dtype=torch.bool)
    inner[2:6, 2:6] = True
    X[inner.flatten()] = torch.randn(int(inner.sum()), 40, generator=g, dtype=torch.float64)
    B = X @ X.t()
    D = X[:, :3].clone()
    fit = fit_pooling(D, B, (h, w), stride=2, alpha=1.0, k=1, solver="exact")
    summary = fit.summary()
    assert summary["cells_undefined"] > 0
    assert 0 < summary["separability_gain"] < 1e6
