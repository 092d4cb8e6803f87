#!/usr/bin/env python
"""Can the learned-pooling fit be solved locally? Window solves certified on the full problem, measured.

For output cell m the top generalized eigenvectors of (A, B + αC_m) are solved on a (2r+1)² window of
input locations around the cell (a coordinate Rayleigh–Ritz: the residual vanishes on the window), then
certified on the full problem with a rigorous bound: since G_m = B + αC_m ⪰ α·C_m (B ⪰ 0) and the residual
r lives outside the window where C_m > 0, ‖r‖_{G⁻¹} ≤ (Σ_{n∉W} r_n² / (α c_n))^{1/2}; with x G-normalised
there is an eigenvalue within that of θ (and sin∠ ≤ it / gap, Davis–Kahan). The table reports that bound
relative to θ, i.e. the certificate a localised solver would have to bring under ~1e-8.

Second part: the same windows as a preconditioner (exact solve on the window, Jacobi outside) and start for
the full LOBPCG, against the plain Jacobi LOBPCG, same run.

    python benchmarks/locality_bench.py STATS.safetensors [--alpha 1,25] [--radius 4,8,16] [--cells 64]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import machine  # noqa: E402

from poolcli.learn.eigen import locality_penalty, output_grid, solve_lobpcg  # noqa: E402
from poolcli.learn.pooling import needs_ridge  # noqa: E402
from poolcli.pipeline.collect import load_stats  # noqa: E402


def windows(hw: tuple[int, int], out: tuple[int, int], r: int) -> torch.Tensor:
    """[M, w] input-location indices of a (2r+1)² box around each cell's centre, shifted to stay inside."""
    m = torch.arange(out[0] * out[1])
    cy = ((m // out[1]) + 0.5) * hw[0] / out[0] - 0.5
    cx = ((m % out[1]) + 0.5) * hw[1] / out[1] - 0.5
    sy, sx = min(2 * r + 1, hw[0]), min(2 * r + 1, hw[1])
    y0 = (cy.round().long() - r).clamp(0, hw[0] - sy)
    x0 = (cx.round().long() - r).clamp(0, hw[1] - sx)
    yy = y0[:, None] + torch.arange(sy)[None]
    xx = x0[:, None] + torch.arange(sx)[None]
    return (yy[:, :, None] * hw[1] + xx[:, None, :]).reshape(len(m), -1)


def window_solve(D, B, pen, alpha, idx, k):
    """Top k+1 eigenpairs of the windowed problems, embedded in N ([M, N, k+1]), and G_W's Cholesky factors."""
    GW = B[idx[:, :, None], idx[:, None, :]]
    GW.diagonal(dim1=1, dim2=2).add_(alpha * pen.gather(1, idx))
    L = torch.linalg.cholesky(GW)
    Z = torch.linalg.solve_triangular(L, D[idx], upper=False)  # L⁻¹ D_W: A_W's eigenproblem as an SVD
    U = torch.linalg.svd(Z, full_matrices=False)[0][:, :, : k + 1]
    Y = torch.linalg.solve_triangular(L.transpose(1, 2), U, upper=True)
    X = torch.zeros(idx.shape[0], B.shape[0], k + 1, dtype=B.dtype)
    X.scatter_(1, idx[:, :, None].expand(-1, -1, k + 1), Y)
    return X, L


def certificate(D, B, pen, alpha, X):
    """max over the k+1 vectors of ‖r‖_{G⁻¹} bound / θ, per cell."""
    Ax = D @ (D.t() @ X.permute(1, 0, 2).reshape(B.shape[0], -1))
    Bx = B @ X.permute(1, 0, 2).reshape(B.shape[0], -1)
    m, n, b = X.shape
    Ax = Ax.reshape(n, m, b).permute(1, 0, 2)
    Gx = Bx.reshape(n, m, b).permute(1, 0, 2) + alpha * pen[:, :, None] * X
    xg = (X * Gx).sum(1)
    theta = (X * Ax).sum(1) / xg
    R = Ax - Gx * theta[:, None, :]
    bound = ((R**2) / (alpha * pen[:, :, None]).clamp(min=1e-300)).sum(1).sqrt() / xg.sqrt()
    return (bound / theta.abs()).amax(1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("stats")
    ap.add_argument("--alpha", default="1,25")
    ap.add_argument("--radius", default="4,8,16")
    ap.add_argument("--cells", type=int, default=64, help="output cells sampled for the certificate table")
    ap.add_argument("--precond-radius", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-lobpcg", action="store_true", help="only the certificate table")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    stats, meta = load_stats(a.stats)
    D, B = stats.scatter()
    s = float(B.diagonal().mean())
    D, B = D / math.sqrt(s), B / s  # the scale-free problem fit-pooling solves
    B.diagonal().add_(needs_ridge(B))
    hw = tuple(meta["grid"])
    out = output_grid(hw, 2)
    pen = locality_penalty(hw, out)
    M, k = pen.shape[0], 2
    cells = torch.linspace(0, M - 1, min(a.cells, M)).round().long()
    print(f"# locality of the learned-pooling eigenvectors, {Path(a.stats).name}: N={B.shape[0]}, M={M}, {machine()}")
    print("\n| α | window | cells certified ≤ 1e-8 | median certificate | max certificate |")
    print("|---|---|---|---|---|")
    for alpha in (float(x) for x in a.alpha.split(",")):
        for r in (int(x) for x in a.radius.split(",")):
            idx = windows(hw, out, r)[cells]
            X, _ = window_solve(D, B, pen[cells], alpha, idx, k)
            cert = certificate(D, B, pen[cells], alpha, X)
            side = int(math.isqrt(idx.shape[1]))
            print(
                f"| {alpha:g} | {side}×{side} | {int((cert <= 1e-8).sum())}/{len(cells)} | "
                f"{float(cert.median()):.1e} | {float(cert.max()):.1e} |"
            )
    if a.no_lobpcg:
        return
    print(f"\nfull LOBPCG (tol 1e-9), Jacobi vs a {2 * a.precond_radius + 1}² window preconditioner and start:\n")
    print("| α | Jacobi: iterations | time | window: iterations | time (incl. window solves) | ratio |")
    print("|---|---|---|---|---|---|")
    idx = windows(hw, out, a.precond_radius)
    diag = B.diagonal()[None] + 0.0
    for alpha in (float(x) for x in a.alpha.split(",")):
        t0 = time.perf_counter()
        plain = solve_lobpcg(D, B, pen, alpha, k, tol=1e-9)
        t_plain = time.perf_counter() - t0
        t0 = time.perf_counter()
        X0, L = window_solve(D, B, pen, alpha, idx, k)
        jac = 1.0 / (diag + alpha * pen)

        def precond(R, act, jac=jac, L=L):
            res = R * jac[act][:, :, None]
            ix = idx[act][:, :, None].expand(-1, -1, R.shape[2])
            return res.scatter_(1, ix, torch.cholesky_solve(R.gather(1, ix), L[act]))

        local = solve_lobpcg(D, B, pen, alpha, k, tol=1e-9, X0=X0, precond=precond)
        t_local = time.perf_counter() - t0
        print(
            f"| {alpha:g} | {plain.iterations} | {t_plain:.1f} s | {local.iterations} | {t_local:.1f} s | "
            f"{t_plain / t_local:.2f}× |"
        )


if __name__ == "__main__":
    main()
