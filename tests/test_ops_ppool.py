"""P-pooling: limits, reference implementation, float64 gradcheck, extreme values (hypothesis).

Every property is checked on both implementations: the fused C kernel ("native", CPU) and the torch tap
loop ("torch", the path CUDA and compiler-less machines take); test_ops_ppool_native.py holds them to
each other on random inputs and covers the kernel's build and fallback.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from poolcli.ops.ppool import PPool2d, p_pool2d, p_pool2d_unfold

GEOMS = [(2, 2, 0), (3, 2, 1), (3, 1, 1), (2, 1, 0), ((3, 2), (2, 1), (1, 0))]
IMPLS = ["native", "torch"]


def _x(*shape, dtype=torch.float64, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.mark.parametrize("k,s,p", GEOMS)
@pytest.mark.parametrize("impl", IMPLS)
def test_alpha_zero_is_average_pooling(k, s, p, impl):
    x = _x(2, 3, 9, 7)
    x[0, 0, :2, :2] = 0.0  # exact zeros are averaged in too
    ref = F.avg_pool2d(x, k, s, p, count_include_pad=False)
    assert torch.allclose(p_pool2d(x, 0.0, k, s, p, impl=impl), ref, rtol=0, atol=1e-15)


@pytest.mark.parametrize("k,s,p", GEOMS)
@pytest.mark.parametrize("impl", IMPLS)
def test_large_alpha_is_max_pooling(k, s, p, impl):
    x = _x(2, 3, 9, 7)
    m = F.max_pool2d(x, k, s, p)
    taps = (k if isinstance(k, int) else k[0]) * (k if isinstance(k, int) else k[1])
    for alpha in (1e3, 1e4):
        rel = ((p_pool2d(x, alpha, k, s, p, impl=impl) - m) / m).abs().max().item()
        # max over t∈[0,1] of t^α(1−t) is ≤ 1/(eα) per other tap: the exact worst case of the operator itself
        assert rel <= (taps - 1) / (math.e * alpha)
    assert ((p_pool2d(x, 1e4, k, s, p, impl=impl) - m) / m).abs().max() < 1e-4


@pytest.mark.parametrize("k,s,p", GEOMS)
@pytest.mark.parametrize("impl", IMPLS)
def test_matches_unfold_reference_with_alpha_map(k, s, p, impl):
    x = _x(2, 3, 9, 7)
    ho, wo = F.max_pool2d(x, k, s, p).shape[-2:]
    alpha = _x(2, 3, ho, wo, seed=1) * 6
    assert torch.allclose(p_pool2d(x, alpha, k, s, p, impl=impl), p_pool2d_unfold(x, alpha, k, s, p), atol=1e-13)


@pytest.mark.parametrize("k,s,p", GEOMS[:3])
@pytest.mark.parametrize("impl", IMPLS)
def test_gradcheck_x_and_alpha(k, s, p, impl):
    x = (_x(1, 2, 6, 5) + 0.05).requires_grad_()
    ho, wo = F.max_pool2d(x, k, s, p).shape[-2:]
    alpha = (_x(1, 2, ho, wo, seed=2) * 4).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: p_pool2d(a, b, k, s, p, impl=impl), (x, alpha))


@pytest.mark.parametrize("impl", IMPLS)
def test_gradcheck_negative_inputs_shift(impl):
    x = (torch.randn(1, 2, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))).requires_grad_()
    assert torch.autograd.gradcheck(lambda a: p_pool2d(a, 2.0, 2, negative="shift", impl=impl), (x,))
    # the same with a 3×3/2 window, padding, and an α map
    alpha = (_x(1, 2, 2, 2, seed=4) * 3).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: p_pool2d(a, b, 3, 2, 1, negative="shift", impl=impl), (x, alpha))


@pytest.mark.parametrize("impl", IMPLS)
def test_shift_matches_paper_formula_for_negative_maps(impl):
    x = torch.randn(1, 1, 4, 4, dtype=torch.float64)
    xmin = x.min()
    expect = p_pool2d_unfold(x - xmin, 3.0, 2) + xmin
    assert torch.allclose(p_pool2d(x, 3.0, 2, impl=impl), expect)
    pos = x.abs()
    assert torch.equal(
        p_pool2d(pos, 3.0, 2, impl=impl), p_pool2d(pos, 3.0, 2, negative="clamp", impl=impl)
    )  # no shift when ≥ 0


def test_side_branch_module_starts_near_max_and_trains():
    torch.manual_seed(0)
    layer = PPool2d(4, 3, 2, 1, alpha_init=30.0)
    x = torch.rand(2, 4, 8, 8)
    y = layer(x)
    m = F.max_pool2d(x, 3, 2, 1)
    assert ((y - m).abs() / m).mean() < 0.05
    y.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in layer.parameters())


@settings(max_examples=40, deadline=None)
@given(
    b=st.integers(1, 2),
    c=st.integers(1, 3),
    h=st.integers(2, 9),
    w=st.integers(2, 9),
    k=st.integers(1, 3),
    s=st.integers(1, 3),
    alpha=st.sampled_from([0.0, 0.5, 3.0, 100.0, 1000.0]),
    scale=st.sampled_from([0.0, 1e-30, 1.0, 1e4, 6e4]),
    dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]),
    impl=st.sampled_from(IMPLS),
    seed=st.integers(0, 2**16),
)
def test_finite_for_extreme_values(b, c, h, w, k, s, alpha, scale, dtype, impl, seed):
    k = min(k, h, w)
    x = (_x(b, c, h, w, dtype=torch.float32, seed=seed) * scale).to(dtype).requires_grad_()
    y = p_pool2d(x, alpha, k, s, k // 2, impl=impl)
    assert y.dtype == dtype and torch.isfinite(y).all()
    y.float().sum().backward()
    assert torch.isfinite(x.grad.float()).all() or scale < 1e-20  # x^α has an infinite slope at 0 for α < 1
