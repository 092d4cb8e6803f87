"""The closed-form pooling fit (seed 001 Algorithm 1, solved without inverses) and its report."""

from __future__ import annotations

import dataclasses
import math

import torch

from .eigen import locality_penalty, output_grid, solve_exact, solve_lobpcg_chunked
from .memory import plan_fit


@dataclasses.dataclass
class PoolingFit:
    P: torch.Tensor  # [k, M, N], normalised, sign fixed (positive sum)
    eigenvalues: torch.Tensor  # [M, k]
    guard: torch.Tensor  # [M] (k+1)-th eigenvalue
    ratio: torch.Tensor  # [M] pᵀAp / pᵀBp of the top map
    avg_ratio: torch.Tensor  # [M] the same for average pooling over the stride window
    in_hw: tuple[int, int]
    out_hw: tuple[int, int]
    alpha: float
    norm: str
    ridge: float
    b_scale: float
    solver: str
    iterations: int
    residual: float

    def summary(self) -> dict:
        gap = (
            (self.eigenvalues[:, 0] - self.eigenvalues[:, 1]) / self.eigenvalues[:, 0].abs()
            if self.eigenvalues.shape[1] > 1
            else (self.eigenvalues[:, 0] - self.guard) / self.eigenvalues[:, 0].abs()
        )
        valid = torch.isfinite(self.ratio) & torch.isfinite(self.avg_ratio) & (self.avg_ratio > 0)
        gain = (self.ratio[valid] / self.avg_ratio[valid]).mean() if bool(valid.any()) else torch.tensor(float("nan"))
        return {
            "alpha": self.alpha,
            "norm": self.norm,
            "k": self.P.shape[0],
            "in_grid": list(self.in_hw),
            "out_grid": list(self.out_hw),
            "separability_mean": float(self.ratio[valid].mean()) if bool(valid.any()) else float("nan"),
            "separability_avgpool_mean": float(self.avg_ratio[valid].mean()) if bool(valid.any()) else float("nan"),
            "separability_gain": float(gain),
            "cells_undefined": int((~valid).sum()),
            "cells_undefined_definition": "output cells whose average-pooled or fitted map has zero within-class "
            "scatter (constant input, e.g. blank border): left out of the means",
            "eigengap_rel_mean": float(gap.mean()),
            "eigengap_rel_min": float(gap.min()),
            "ridge": self.ridge,
            "b_scale": self.b_scale,
            "solver": self.solver,
            "iterations": self.iterations,
            "residual": self.residual,
        }


def average_vectors(in_hw: tuple[int, int], out_hw: tuple[int, int], dtype=torch.float64) -> torch.Tensor:
    """[M, N]: average pooling over each output cell's window (the grid split into Ho×Wo blocks)."""
    h, w = in_hw
    ho, wo = out_hw
    rows = torch.arange(h) * ho // h
    cols = torch.arange(w) * wo // w
    cell = (rows[:, None] * wo + cols[None, :]).reshape(-1)
    onehot = torch.nn.functional.one_hot(cell, ho * wo).t().to(dtype)
    return onehot / onehot.sum(1, keepdim=True)


def quadratic(M: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """vᵀ M v for rows of v [M, N]."""
    return ((v @ M) * v).sum(1)


def between(D: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """vᵀ A v = ‖Dᵀ v‖² for rows of v, with A = D Dᵀ never formed."""
    return ((v @ D) ** 2).sum(1)


def _normalise(vecs: torch.Tensor, norm: str) -> torch.Tensor:
    """vecs [M, N, k] → normalised by ℓ1/ℓ2 per map, sign so that the sum is positive."""
    total = vecs.sum(1, keepdim=True)
    big = vecs.gather(1, vecs.abs().argmax(1, keepdim=True))
    sign = torch.where(total.abs() > 1e-9 * vecs.abs().sum(1, keepdim=True), total.sign(), big.sign())
    vecs = vecs * sign
    size = vecs.abs().sum(1, keepdim=True) if norm == "l1" else vecs.norm(dim=1, keepdim=True)
    return vecs / size


def _safe_ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """num/den per cell, NaN where the within-class scatter den is (numerically) zero: a cell that sees only
    constant input (a blank border) has no defined separability."""
    floor = 1e-12 * float(den.abs().max()) if den.numel() else 0.0
    ok = den > max(floor, 1e-300)
    return torch.where(ok, num / torch.where(ok, den, torch.ones_like(den)), torch.full_like(num, float("nan")))


def solver_for(solver: str, n: int) -> str:
    """The solver ``auto`` picks: LAPACK per location up to 256 input locations, LOBPCG above."""
    return ("exact" if n <= 256 else "lobpcg") if solver == "auto" else solver


SINGULAR_COND = 1e9  # B is treated as singular when λ_min ≤ λ_max / 1e9


def needs_ridge(B: torch.Tensor, rank_bound: int | None = None) -> float:
    """A ridge of 1e-6·mean(diag B) when B is numerically singular, else 0.

    Numerically singular: λ_min(B) ≤ λ_max(B)/1e9 (condition number ≥ 1e9, where the generalized
    eigenvectors lose about 7 of float64's 16 digits). Decided without an eigendecomposition:

    * ``rank_bound`` (from the counts: rank B ≤ Σ_q (K_q − 1)·C) below N: singular, no work at all — the
      usual case for early layers (N = 12544 locations from 200 images of 64 channels);
    * otherwise a Cholesky factorisation of B − (λ_max/1e9)·I, which succeeds exactly when λ_min exceeds
      the threshold up to rounding of ~N·ε·λ_max (far below it); λ_max from 30 power iterations (a
      factor-2 error in it moves the threshold by a factor 2, nowhere near the decision for exactly
      rank-deficient B). Costs N³/3 flops and one N×N copy, not the 4N³/3 of a tridiagonalisation.
    Whether an unshifted Cholesky of an exactly rank-deficient B succeeds depends on rounding (it did in
    5 of 8 random draws); the shift makes the answer the same every time.
    """
    n = B.shape[0]
    ridge = 1e-6 * float(torch.diagonal(B).mean())
    if rank_bound is not None and rank_bound < n:
        return ridge
    v = torch.ones(n, 1, dtype=B.dtype, device=B.device) / math.sqrt(n)
    top = 0.0
    for _ in range(30):
        w = B @ v
        top = float(w.norm())
        if not top > 0:
            return ridge
        v = w / top
    shifted = B.clone()
    shifted.diagonal().sub_(2 * top / SINGULAR_COND)  # power iteration underestimates λ_max, by < 2× here
    _, info = torch.linalg.cholesky_ex(shifted)
    del shifted
    return ridge if int(info) != 0 else 0.0


def fit_pooling(
    D: torch.Tensor,
    B: torch.Tensor,
    in_hw: tuple[int, int],
    *,
    stride: int = 2,
    alpha: float = 25.0,
    k: int = 2,
    norm: str = "l2",
    solver: str = "auto",
    ridge: float | None = None,
    tol: float = 1e-10,
    seed: int = 0,
    max_memory: int | None = None,
    rank_bound: int | None = None,
    held: int = 0,
    device: torch.device | str | None = None,
) -> PoolingFit:
    """The learned pooling for every output cell. ``B`` is used in place and left as it was (a ridge is
    added to its diagonal during the solve, then the diagonal is restored). ``max_memory``: the byte budget
    the LOBPCG chunks are sized to (default: 3/4 of the available memory); a fit that cannot fit is refused
    before any work (``held``: bytes the caller keeps alive beside it, counted in the plan). ``device``:
    where the LOBPCG solve and the separability products run (e.g. ``cuda``: B and D are copied there, the
    budget is then the device's free memory); results come back on the CPU."""
    if norm not in ("l1", "l2"):
        raise ValueError(f"norm must be l1 or l2, not {norm!r}")
    n = B.shape[0]
    if n != in_hw[0] * in_hw[1]:
        raise ValueError(f"statistics have {n} locations, not {in_hw[0]}×{in_hw[1]}")
    out_hw = output_grid(in_hw, stride)
    # α is made scale-free: B's diagonal grows with channels and classes, so the problem is posed for A and
    # B divided by s = mean(diag B) (α then weighs squared pixel distance against the average within-class
    # scatter of one location). A/s p = λ (B/s + α C) p is A p = λ (B + α s C) p: same λ and p, so the
    # solver gets B itself and α·s (no scaled N×N copy)
    b_scale = float(torch.diagonal(B).mean())
    if not b_scale > 0:
        raise ValueError("the within-class scatter is zero: every image of a class has the same map at this site")
    method = solver_for(solver, n)
    if method not in ("exact", "lobpcg"):
        raise ValueError(f"solver must be auto, exact or lobpcg, not {solver!r}")
    dev = torch.device(device) if device is not None else B.device
    if method == "exact":
        dev = torch.device("cpu")  # LAPACK through scipy
    on_gpu = dev.type == "cuda"
    plan = plan_fit(n, out_hw[0] * out_hw[1], k, D.shape[1], method, max_memory, 0 if on_gpu else held, dev)
    if dev != B.device:
        D, B = D.to(dev), B.to(dev)
    ridge = needs_ridge(B, rank_bound) / b_scale if ridge is None else float(ridge)  # relative to the scaled B
    diagonal = B.diagonal().clone()
    a_s = alpha * b_scale
    try:
        if ridge:
            B.diagonal().add_(ridge * b_scale)
        if method == "exact":
            res = solve_exact(D @ D.t(), B, locality_penalty(in_hw, out_hw), a_s, k)  # LAPACK needs A dense
        else:
            res = solve_lobpcg_chunked(D, B, in_hw, out_hw, a_s, k, chunk=plan.chunk, tol=tol, seed=seed)
    finally:
        B.diagonal().copy_(diagonal)  # the separability below is measured with the scatter itself
    vecs = _normalise(res.vectors, norm)
    top = vecs[:, :, 0]
    avg = average_vectors(in_hw, out_hw).to(B.device)
    ratio = _safe_ratio(between(D, top), quadratic(B, top))
    avg_ratio = _safe_ratio(between(D, avg), quadratic(B, avg))
    return PoolingFit(
        P=vecs.permute(2, 0, 1).float().contiguous().cpu(),
        eigenvalues=res.values.cpu(),
        guard=res.guard.cpu(),
        ratio=ratio.cpu(),
        avg_ratio=avg_ratio.cpu(),
        in_hw=tuple(in_hw),
        out_hw=out_hw,
        alpha=float(alpha),
        norm=norm,
        ridge=ridge,
        b_scale=b_scale,
        solver=method,
        iterations=res.iterations,
        residual=res.residual if not math.isnan(res.residual) else 0.0,
    )
