"""GSP: transport plan vs an independent float64 fixed-point solver, marginals, limits, gradients, ZSR."""

from __future__ import annotations

import math

import pytest
import torch

from poolcli.ops.gsp import GSP, ZSRLoss, greedy_k_center, gsp_pool, transport_costs, transport_plan


def _inputs(b=3, d=5, h=4, w=3, m=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, d, h, w, generator=g, dtype=torch.float64), torch.randn(
        m, d, generator=g, dtype=torch.float64
    )


def fixed_point_plan(cost: torch.Tensor, mu: float, gamma: float, iters: int = 20000):
    """The reference solver of the notes (§3): scalar fixed point on b in the exp domain, float64, to convergence."""
    n = cost.shape[0]
    K = torch.exp(-gamma * (cost - cost.min()))  # a constant shift of all costs leaves the plan unchanged
    kappa = K.sum(1)
    bdual = torch.tensor(1.0, dtype=torch.float64)
    for _ in range(iters):
        p = (1.0 / n) / (1 + bdual * kappa)
        bdual = mu / (p * kappa).sum()
    p = (1.0 / n) / (1 + bdual * kappa)
    return bdual * K * p[:, None], p  # P as [n, m], residual ρ


@pytest.mark.parametrize("mu,gamma", [(0.3, 5.0), (0.5, 20.0), (0.7, 1.0)])
def test_plan_matches_independent_solver_and_marginals(mu, gamma):
    f, protos = _inputs()
    g, z, t = gsp_pool(f, protos, mu, gamma)
    P, rho = transport_plan(t, f, protos, gamma)
    feats = f.flatten(2).transpose(1, 2)
    cost = transport_costs(feats, protos)
    n = feats.shape[1]
    for b in range(f.shape[0]):
        P_ref, rho_ref = fixed_point_plan(cost[b], mu, gamma)
        assert torch.allclose(P[b].t(), P_ref, atol=1e-12)
        assert torch.allclose(rho[b], rho_ref, atol=1e-12)
    assert torch.allclose(rho + P.sum(1), torch.full_like(rho, 1 / n), atol=1e-12)  # source marginals
    assert torch.allclose(P.sum((1, 2)), torch.full((f.shape[0],), mu, dtype=torch.float64), atol=1e-10)  # mass μ
    assert (P >= 0).all() and (rho >= 0).all()
    assert torch.allclose(z.sum(1), torch.ones(f.shape[0], dtype=torch.float64)) and (z >= 0).all()
    assert torch.allclose(g, torch.einsum("bmn,bnd->bd", P, feats) / mu)


def test_mu_one_is_gap_exactly():
    f, protos = _inputs()
    g, _, _ = gsp_pool(f, protos, 1.0, 5.0)
    assert torch.equal(
        g, torch.einsum("bn,bnd->bd", torch.full((3, 12), 1 / 12, dtype=torch.float64), f.flatten(2).transpose(1, 2))
    )
    assert torch.allclose(g, f.mean((2, 3)), atol=1e-15)
    layer = GSP(5, mu=1.0).double()
    layer.initialized.fill_(True)
    assert torch.allclose(layer(f), layer.proj(f).mean((2, 3)), atol=1e-14)


def test_large_gamma_is_mean_of_nearest_features():
    f, protos = _inputs(b=1, h=5, w=4)
    n, mu = 20, 0.3
    g, _, t = gsp_pool(f, protos, mu, gamma=2000.0)
    cost = transport_costs(f.flatten(2).transpose(1, 2), protos)[0].min(1).values
    k = math.ceil(mu * n)  # μn = 6 exactly: the 6 nearest features get all the weight
    nearest = cost.argsort()[:k]
    expect = f.flatten(2)[0][:, nearest].mean(1)
    assert torch.allclose(g[0], expect, atol=1e-6)


def test_small_gamma_is_gap():
    f, protos = _inputs()
    _, _, t = gsp_pool(f, protos, 0.4, 1e-7)
    assert torch.allclose(t / t.mean(1, keepdim=True), torch.ones_like(t), atol=1e-6)


def test_gradcheck_features_and_prototypes():
    f, protos = _inputs(b=2, d=3, h=3, w=3, m=4)
    f.requires_grad_()
    protos.requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: gsp_pool(a, b, 0.3, 5.0)[0], (f, protos))
    assert torch.autograd.gradcheck(lambda a, b: gsp_pool(a, b, 0.3, 5.0)[1], (f, protos))


def test_invariances():
    f, protos = _inputs(b=1)
    g, z, _ = gsp_pool(f, protos, 0.3, 5.0)
    perm = torch.randperm(protos.shape[0])
    g2, z2, _ = gsp_pool(f, protos[perm], 0.3, 5.0)
    assert torch.allclose(g, g2) and torch.allclose(z[:, perm], z2)
    flat = f.flatten(2)[:, :, torch.randperm(12)].view_as(f)
    assert torch.allclose(gsp_pool(flat, protos, 0.3, 5.0)[0], g)


def test_float32_stable_at_large_gamma():
    f, protos = _inputs()
    g, z, t = gsp_pool(f.float() * 10, protos.float(), 0.3, 50.0)
    assert torch.isfinite(g).all() and torch.isfinite(z).all()


def test_prototype_warmup_then_kcenter():
    torch.manual_seed(0)
    layer = GSP(4, num_prototypes=3, memory_size=8).train()
    x = torch.randn(4, 4, 3, 3)
    assert torch.allclose(layer(x), layer.proj(x).mean((2, 3)))  # GAP while collecting
    layer(x)
    assert bool(layer.initialized)
    pts = torch.tensor([[0.0, 0], [0.1, 0], [5, 5], [5, 5.1], [-5, 5]])
    clusters = {(0.0, 0.0): 0, (0.1, 0.0): 0, (5.0, 5.0): 1, (5.0, 5.1): 1, (-5.0, 5.0): 2}
    for seed in range(5):  # whatever the first pick, farthest-point traversal covers all three clusters
        picked = {clusters[tuple(round(v, 1) for v in p)] for p in greedy_k_center(pts, 3, seed).tolist()}
        assert picked == {0, 1, 2}


def test_zsr_loss():
    torch.manual_seed(0)
    loss = ZSRLoss(num_classes=4, embed_dim=3).double()
    z = torch.softmax(torch.randn(8, 5, dtype=torch.float64), 1)
    labels = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    a, b = ZSRLoss.split(labels)
    assert set(labels[a].tolist()).isdisjoint(labels[b].tolist())
    zb, u = z[b], loss.class_embeddings[labels[b]]
    primal = torch.linalg.solve(zb.t() @ zb + 0.05 * torch.eye(5, dtype=torch.float64), zb.t() @ u)
    assert torch.allclose(loss.ridge(zb, u), primal, atol=1e-10)
    value = loss(z.requires_grad_(), labels)
    value.backward()
    assert torch.isfinite(value) and z.grad.abs().sum() > 0
    zero = torch.zeros(8, 5, dtype=torch.float64, requires_grad=True)
    l0 = loss(zero, labels)
    l0.backward()
    assert abs(float(l0.detach()) - math.log(4)) < 1e-12 and zero.grad.abs().max() == 0


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=30, deadline=None)
@given(
    b=st.integers(1, 3),
    h=st.integers(1, 6),
    w=st.integers(1, 6),
    m=st.integers(1, 5),
    mu=st.sampled_from([0.05, 0.3, 0.9, 1.0]),
    gamma=st.sampled_from([0.01, 5.0, 50.0, 500.0]),
    scale=st.sampled_from([0.0, 1e-3, 1.0, 1e4]),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16]),
    seed=st.integers(0, 2**16),
)
def test_gsp_finite_everywhere(b, h, w, m, mu, gamma, scale, dtype, seed):
    g = torch.Generator().manual_seed(seed)  # data drawn from the example: failures replay
    f = (torch.randn(b, 3, h, w, generator=g) * scale).to(dtype).requires_grad_()
    protos = torch.randn(m, 3, generator=g).to(dtype).requires_grad_()
    g, z, t = gsp_pool(f, protos, mu, gamma)
    assert (
        g.shape == (b, 3) and z.shape == (b, m) and torch.isfinite(g.float()).all() and torch.isfinite(z.float()).all()
    )
    (g.float().sum() + z.float().sum()).backward()
    assert torch.isfinite(f.grad.float()).all() and torch.isfinite(protos.grad.float()).all()
