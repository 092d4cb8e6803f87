"""Generalized Sum Pooling (Gurbuz, Sener, Alatan, "Generalized Sum Pooling for Metric Learning",
arXiv:2308.09228) and its zero-shot regulariser.

Per image, features f_i = V x_i (1×1 conv, i over the n = H·W locations) are softly assigned to m
prototypes by entropic partial optimal transport: mass μ goes to the prototypes, 1 − μ to a zero-cost
dustbin, costs c_ji = ‖N(ω_j) − N(f_i)‖ with N the projection onto the unit ball, entropy weight 1/γ.
The solution has a closed form with one scalar β per image:
    ℓ_i = logsumexp_j(−γ c_ji),   t_i = σ(β + ℓ_i),   mean_i t_i = μ,
    g = Σ t_i f_i / Σ t_i,   z_j = Σ_i t_i a_ji / Σ t_i,   a_ji = softmax_j(−γ c_ji),
    plan P_ji = t_i a_ji / n,   residual ρ_i = (1 − t_i) / n.
β is found in float64 by safeguarded Newton (bracketed, log domain, no overflow for any γ) without
autograd; gradients come from implicit differentiation via one Newton step re-attached to the graph,
so memory does not depend on the number of solver iterations. μ = 1 is GAP exactly.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def unit_ball(v: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """N(v) = v / max(1, ‖v‖)."""
    return v / torch.clamp(v.norm(dim=dim, keepdim=True), min=1.0)


def transport_costs(f: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """c[b, i, j] = ‖N(ω_j) − N(f_bi)‖ for f [B, n, d], prototypes [m, d].

    The expansion ‖a‖² − 2a·b + ‖b‖² is one matrix product (fast) but cancels catastrophically near a
    prototype: in float32 a feature equal to a prototype got cost ~1e-3 instead of 0, moving z by 1e-2 at
    γ = 500. Entries where it lost more than a decimal digit (‖a−b‖² < (‖a‖² + ‖b‖²)/10) are recomputed
    from the differences, so every cost keeps about float32's relative accuracy (the rest have cost ≥ 0.3
    on the unit ball, where the expansion's absolute error ~3e-7 is a relative 1e-6); only features near a
    prototype are recomputed. The root's gradient at zero distance is taken as 0 (a subgradient of the
    norm) instead of adding an ε under the root, which biased every small cost by √ε.
    """
    work = torch.float32 if f.dtype in (torch.float16, torch.bfloat16) else f.dtype
    fn, wn = unit_ball(f.to(work)), unit_ball(prototypes.to(work))
    nf, nw = (fn * fn).sum(-1, keepdim=True), (wn * wn).sum(-1)[None, None, :]
    sq = nf + nw - 2 * fn @ wn.t()
    close = sq < 0.1 * (nf + nw)
    if bool(close.any()):
        b, i, j = close.nonzero(as_tuple=True)
        exact = (fn[b, i] - wn[j]).pow(2).sum(-1)
        sq = sq.index_put((b, i, j), exact)
    positive = sq > 0
    cost = torch.where(positive, torch.sqrt(torch.where(positive, sq, torch.ones_like(sq))), torch.zeros_like(sq))
    return cost.to(f.dtype)


@torch.no_grad()
def solve_beta(ell: torch.Tensor, mu: float, iters: int = 60, tol: float = 1e-12) -> torch.Tensor:
    """β [B] with mean_i σ(β + ℓ_bi) = μ, by Newton steps kept inside the bracket (bisection fallback)."""
    ell = ell.double()
    logit = math.log(mu / (1 - mu))
    lo = logit - ell.amax(dim=1)
    hi = logit - ell.amin(dim=1)
    beta = logit - torch.logsumexp(ell, dim=1) + math.log(ell.shape[1])  # exact when all ℓ are equal
    beta = beta.clamp(lo, hi)
    for _ in range(iters):
        t = torch.sigmoid(beta[:, None] + ell)
        fval = t.mean(1) - mu
        if float(fval.abs().max()) < tol:
            break
        lo = torch.where(fval < 0, beta, lo)
        hi = torch.where(fval > 0, beta, hi)
        deriv = (t * (1 - t)).mean(1)
        step = beta - fval / deriv.clamp(min=1e-300)
        inside = (step > lo) & (step < hi)
        beta = torch.where(inside, step, 0.5 * (lo + hi))
    return beta


def gsp_pool(
    f: torch.Tensor, prototypes: torch.Tensor, mu: float = 0.3, gamma: float = 5.0, iters: int = 60
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """GSP of projected features f [B, d, H, W] → (g [B, d], z [B, m], t [B, n])."""
    if not 0.0 < mu <= 1.0:
        raise ValueError(f"mu must be in (0, 1], got {mu}")
    b, d = f.shape[:2]
    feats = f.flatten(2).transpose(1, 2)  # [B, n, d]
    cost = transport_costs(feats, prototypes)  # [B, n, m]
    logits = -gamma * cost
    assign = torch.softmax(logits, dim=-1)  # a_ji as [B, n, m]
    if mu >= 1.0:  # all mass transported: every location weighs the same (GAP)
        t = torch.ones(b, feats.shape[1], dtype=f.dtype, device=f.device)
    else:
        ell = torch.logsumexp(logits, dim=-1)  # [B, n]
        beta_star = solve_beta(ell.detach(), mu, iters).to(ell.dtype)
        # implicit differentiation: one Newton step from the detached root carries dβ/dℓ = −(∂F/∂ℓ)/(∂F/∂β)
        t_star = torch.sigmoid(beta_star[:, None] + ell)
        slope = (t_star * (1 - t_star)).mean(1).detach().clamp(min=torch.finfo(ell.dtype).tiny)
        beta = beta_star - (t_star.mean(1) - mu) / slope
        t = torch.sigmoid(beta[:, None] + ell)
    weight = t / t.sum(1, keepdim=True)  # [B, n]
    g = torch.einsum("bn,bnd->bd", weight, feats)
    z = torch.einsum("bn,bnm->bm", weight, assign)
    return g, z, t


def transport_plan(
    t: torch.Tensor, f: torch.Tensor, prototypes: torch.Tensor, gamma: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The full plan P [B, m, n] and residual ρ [B, n] from t (for checks and visualisation)."""
    n = t.shape[1]
    assign = torch.softmax(-gamma * transport_costs(f.flatten(2).transpose(1, 2), prototypes), dim=-1)
    return (t[:, :, None] * assign / n).transpose(1, 2), (1 - t) / n


def greedy_k_center(points: torch.Tensor, k: int, seed: int = 0) -> torch.Tensor:
    """k points of ``points`` [N, d] chosen greedily to cover the set (farthest-point traversal)."""
    if points.shape[0] < k:
        raise ValueError(f"need at least {k} points for {k} prototypes, got {points.shape[0]}")
    g = torch.Generator().manual_seed(seed)
    first = int(torch.randint(points.shape[0], (1,), generator=g))
    chosen = [first]
    dist = (points - points[first]).norm(dim=1)
    for _ in range(k - 1):
        nxt = int(dist.argmax())
        chosen.append(nxt)
        dist = torch.minimum(dist, (points - points[nxt]).norm(dim=1))
    return points[chosen].clone()


class GSP(nn.Module):
    """GSP global pooling head: 1×1 projection to ``dim``, then :func:`gsp_pool`.

    Prototypes: given, or set by greedy k-center over a memory of the first ``memory_size``
    unit-ball-projected GAP embeddings seen in training (until then the layer returns GAP, as in
    the reference). ``forward`` returns g ([B, dim], or [B, dim, 1, 1] with ``flatten=False``);
    ``forward_with_attributes`` also returns z for the ZSR loss.
    """

    is_poolcli_pool = True

    def __init__(
        self,
        in_channels: int,
        dim: int | None = None,
        num_prototypes: int = 64,
        mu: float = 0.3,
        gamma: float = 5.0,
        flatten: bool = True,
        memory_size: int = 1024,
        iters: int = 60,
    ):
        super().__init__()
        dim = dim or in_channels
        self.mu, self.gamma, self.flatten, self.iters, self.memory_size = (
            float(mu),
            float(gamma),
            flatten,
            iters,
            memory_size,
        )
        self.proj = nn.Conv2d(in_channels, dim, 1, bias=False)
        if dim == in_channels:  # start as the identity map, so GSP with μ=1 equals the GAP it replaces
            with torch.no_grad():
                self.proj.weight.copy_(torch.eye(dim).view(dim, dim, 1, 1))
        self.prototypes = nn.Parameter(unit_ball(torch.randn(num_prototypes, dim)))
        self.register_buffer("initialized", torch.tensor(False))
        self._memory: list[torch.Tensor] = []
        self.keep_attributes = False
        self.attributes: torch.Tensor | None = None

    @torch.no_grad()
    def init_prototypes(self, embeddings: torch.Tensor, seed: int = 0) -> None:
        self.prototypes.copy_(greedy_k_center(unit_ball(embeddings.float()), self.prototypes.shape[0], seed))
        self.initialized.fill_(True)

    def forward_with_attributes(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.proj(x)
        if not bool(self.initialized):
            gap = f.mean((2, 3))
            if self.training:
                self._memory.append(unit_ball(gap.detach()))
                if sum(m.shape[0] for m in self._memory) >= self.memory_size:
                    self.init_prototypes(torch.cat(self._memory)[: self.memory_size])
                    self._memory.clear()
            return gap, torch.full(
                (x.shape[0], self.prototypes.shape[0]), 1.0 / self.prototypes.shape[0], device=x.device, dtype=gap.dtype
            )
        g, z, _ = gsp_pool(f, self.prototypes, self.mu, self.gamma, self.iters)
        return g, z

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g, z = self.forward_with_attributes(x)
        if self.keep_attributes:  # for a ZSR loss computed outside the model (poolcli finetune)
            self.attributes = z
        return g if self.flatten else g[:, :, None, None]

    def extra_repr(self) -> str:
        return f"m={self.prototypes.shape[0]}, mu={self.mu}, gamma={self.gamma}"


class ZSRLoss(nn.Module):
    """Zero-shot regularisation (seed 004 / notes §7): predict class embeddings from attributes z of one
    class-disjoint half of the batch with a closed-form ridge fitted on the other half, then softmax
    cross-entropy (scale 9.5) against all class embeddings; both directions, averaged."""

    def __init__(self, num_classes: int, embed_dim: int, lam: float = 0.05, scale: float = 9.5):
        super().__init__()
        self.lam, self.scale = float(lam), float(scale)
        self.class_embeddings = nn.Parameter(torch.empty(num_classes, embed_dim))
        nn.init.kaiming_normal_(self.class_embeddings, mode="fan_out")

    @staticmethod
    def split(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Class-disjoint halves: the batch's classes, in order of first appearance, alternate between A and B."""
        classes = list(dict.fromkeys(labels.tolist()))
        in_a = torch.tensor([classes.index(c) % 2 == 0 for c in labels.tolist()], device=labels.device)
        return in_a.nonzero().squeeze(1), (~in_a).nonzero().squeeze(1)

    def ridge(self, z: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """W = zᵀ (z zᵀ + λI)⁻¹ u, by a linear solve (dual form)."""
        gram = z @ z.t() + self.lam * torch.eye(z.shape[0], dtype=z.dtype, device=z.device)
        return z.t() @ torch.linalg.solve(gram, u)

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        a, b = self.split(labels)
        if a.numel() == 0 or b.numel() == 0:
            return z.sum() * 0.0  # one class only: nothing to predict zero-shot
        emb = self.class_embeddings
        u = emb[labels]
        pred = torch.empty(z.shape[0], emb.shape[1], dtype=z.dtype, device=z.device)
        pred[a] = z[a] @ self.ridge(z[b], u[b])
        pred[b] = z[b] @ self.ridge(z[a], u[a])
        return F.cross_entropy(self.scale * pred @ emb.t(), labels)
