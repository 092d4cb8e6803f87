"""Learned linear pooling, classic pools, the registry."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from poolcli.errors import BadInputError
from poolcli.ops.classic import RMAC, GeM, LPPool2d, SPoC, gem, lp_pool2d, rmac_regions, soft_pool2d
from poolcli.ops.learned import LearnedLinearPool
from poolcli.ops.registry import build_from_spec, parse_op_spec


def test_learned_with_average_weights_is_avg_pool():
    x = torch.randn(2, 5, 8, 6, dtype=torch.float64)
    layer = LearnedLinearPool.average(5, (8, 6), 2, 2).double()
    layer.mean.copy_(torch.randn(5))
    layer.scale.copy_(torch.rand(5) + 0.5)  # normalise/denormalise cancel for weights that sum to 1
    assert torch.allclose(layer(x), F.avg_pool2d(x, 2, 2), atol=1e-13)


def test_learned_from_a_pooling_file_through_the_registry(tmp_path):
    from poolcli.io.poolfile import write_pooling
    from poolcli.ops.registry import build_op

    avg = LearnedLinearPool.average(4, (6, 6), 2, 2)
    mean, scale = torch.randn(4), torch.rand(4) + 0.5
    write_pooling(
        tmp_path / "pool.safetensors",
        {"P": avg.P, "channel_mean": mean, "channel_scale": scale},
        {"in_grid": [6, 6], "out_grid": [3, 3]},
    )
    layer = build_from_spec(f"learned:{tmp_path / 'pool.safetensors'}")
    x = torch.randn(2, 4, 6, 6)
    assert torch.allclose(layer(x), F.avg_pool2d(x, 2), atol=1e-5)
    assert torch.equal(layer.mean, mean) and not isinstance(layer.P, torch.nn.Parameter)
    assert isinstance(build_from_spec(f"learned:{tmp_path / 'pool.safetensors'},trainable=true").P, torch.nn.Parameter)
    # what a checkpoint records: grid params, with P/mean/scale from the state_dict
    rebuilt = build_op("learned", layer.spec_params())
    rebuilt.load_state_dict(layer.state_dict())
    assert torch.equal(rebuilt(x), layer(x))
    (tmp_path / "other.safetensors").write_bytes((tmp_path / "pool.safetensors").read_bytes()[:40])
    with pytest.raises(BadInputError):
        build_from_spec(f"learned:{tmp_path / 'other.safetensors'}")
    with pytest.raises(BadInputError, match="file not found"):
        build_from_spec(f"learned:{tmp_path / 'missing.safetensors'}")


def test_learned_channel_layout_and_trainable():
    layer = LearnedLinearPool(3, (4, 4), (2, 2), k=2, trainable=True)
    P = torch.randn(2, 4, 16)
    layer.set_pooling(P)
    x = torch.randn(1, 3, 4, 4)
    y = layer(x)
    assert y.shape == (1, 6, 2, 2)
    assert torch.allclose(y[0, 3].flatten(), P[1] @ x[0, 1].flatten(), atol=1e-6)  # channel c·k + j
    y.sum().backward()
    assert layer.P.grad is not None


def test_gem_limits_and_gradcheck():
    x = torch.rand(2, 3, 5, 5, dtype=torch.float64) + 0.1
    assert torch.allclose(gem(x, 1.0), x.mean((2, 3), keepdim=True))
    assert torch.allclose(gem(x, 200.0), x.amax((2, 3), keepdim=True), rtol=3e-2)
    p = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: gem(a, b), (x.requires_grad_(), p))
    assert GeM()(x.float()).shape == (2, 3, 1, 1)


def test_lp_pool_definition_limits_and_gradcheck():
    x = torch.rand(2, 3, 7, 6, dtype=torch.float64) + 0.01
    for p in (1.0, 2.0, 3.5):
        assert torch.allclose(lp_pool2d(x, p, 2, 2), F.lp_pool2d(x, p, 2, 2), atol=1e-12)  # torch's, for x ≥ 0
    assert torch.allclose(lp_pool2d(x, 1.0, 3, 2, 1), F.avg_pool2d(x, 3, 2, 1, count_include_pad=True) * 9, atol=1e-12)
    assert torch.allclose(lp_pool2d(x, 1.0), x.sum((2, 3), keepdim=True), atol=1e-12)  # global p=1: sum pooling
    big = lp_pool2d(x, 400.0, 2, 2)
    assert ((big - F.max_pool2d(x, 2, 2)) / F.max_pool2d(x, 2, 2)).abs().max() < 4e-3  # ≤ 4^(1/400) − 1
    signed = torch.randn(1, 2, 4, 4, dtype=torch.float64)
    assert torch.allclose(lp_pool2d(signed, 2.5, 2), lp_pool2d(signed.abs(), 2.5, 2))  # |x|: no NaN (torch gives NaN)
    half = lp_pool2d(torch.full((1, 1, 4, 4), 3e4, dtype=torch.float16), 20.0, 2)  # x^20 would overflow even fp32
    assert torch.allclose(half.float(), torch.full((1, 1, 2, 2), 3e4 * 4 ** (1 / 20)), rtol=2e-3)
    p = torch.tensor(2.5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: lp_pool2d(a, b, 3, 2, 1), (x.requires_grad_(), p))
    z = torch.zeros(1, 1, 4, 4, dtype=torch.float64, requires_grad=True)
    lp_pool2d(z, 3.0, 2).sum().backward()
    assert torch.equal(z.grad, torch.zeros_like(z))  # an all-zero window: 0 with zero gradient
    layer = build_from_spec("lp:p=3,learnable=true", replaced=torch.nn.AdaptiveAvgPool2d(1))
    assert isinstance(layer, LPPool2d) and layer.kernel_size is None and isinstance(layer.p, torch.nn.Parameter)
    assert build_from_spec("lp:p=2", replaced=torch.nn.MaxPool2d(3, 2, 1)).kernel_size == 3
    with pytest.raises(BadInputError, match="has no parameter"):
        build_from_spec("lp:q=2")


def test_softpool_matches_definition_and_gradcheck():
    x = torch.randn(1, 2, 5, 5, dtype=torch.float64)
    cols = F.unfold(x, 3, padding=1, stride=2).view(1, 2, 9, -1)
    valid = F.unfold(torch.ones(1, 1, 5, 5, dtype=torch.float64), 3, padding=1, stride=2).view(1, 1, 9, -1)
    w = torch.exp(cols) * valid
    expect = ((w * cols).sum(2) / w.sum(2)).view(1, 2, 3, 3)
    assert torch.allclose(soft_pool2d(x, 3, 2, 1), expect)
    assert torch.autograd.gradcheck(lambda a: soft_pool2d(a, 3, 2, 1), (x.requires_grad_(),))
    assert torch.isfinite(soft_pool2d(torch.full((1, 1, 4, 4), 1e4), 2)).all()


def test_spoc_and_rmac():
    x = torch.rand(2, 4, 7, 9)
    assert torch.allclose(SPoC()(x).flatten(1), x.sum((2, 3)))
    assert SPoC(centre_prior=True)(x).shape == (2, 4, 1, 1)
    regions = rmac_regions(7, 9, 3)
    assert regions[0] == (0, 0, 7, 9) and all(t + h <= 7 and c + w <= 9 for t, c, h, w in regions)
    assert len(rmac_regions(30, 40, 3)) > 10  # several overlapping regions per scale
    v = RMAC()(x).flatten(1)
    assert torch.allclose(v.norm(dim=1), torch.ones(2), atol=1e-5)


def test_registry_parsing_and_errors():
    assert parse_op_spec("gsp:m=64,mu=0.3,gamma=5") == ("gsp", {"m": 64, "mu": 0.3, "gamma": 5})
    assert parse_op_spec("learned:pool.safetensors") == ("learned", {"file": "pool.safetensors"})
    pool = build_from_spec("max", replaced=torch.nn.MaxPool2d(3, 2, 1))
    assert (pool.kernel_size, pool.stride, pool.padding) == (3, 2, 1)
    assert build_from_spec("ppool", replaced=torch.nn.Conv2d(8, 8, 3, 2, 1))(torch.rand(1, 8, 6, 6)).shape == (
        1,
        8,
        3,
        3,
    )
    with pytest.raises(BadInputError, match="unknown pooling operator"):
        build_from_spec("fancy")
    with pytest.raises(BadInputError, match="channels"):
        build_from_spec("gsp")


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=30, deadline=None)
@given(
    b=st.integers(1, 2),
    h=st.integers(1, 7),
    w=st.integers(1, 7),
    scale=st.sampled_from([0.0, 1e-6, 1.0, 1e3, 6e4]),
    dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]),
    seed=st.integers(0, 2**16),
)
def test_classic_pools_finite(b, h, w, scale, dtype, seed):
    x = (torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed)) * scale).to(dtype)
    for out in (gem(x.float(), 3.0).to(dtype), soft_pool2d(x, 1 if min(h, w) < 2 else 2), RMAC()(x.float())):
        assert torch.isfinite(out.float()).all()
    fits = (
        x.float().sum((2, 3)).abs().max() < torch.finfo(dtype).max
    )  # a sum beyond the dtype's range is inf by definition
    assert torch.isfinite(SPoC(True)(x).float()).all() or not fits
