#!/usr/bin/env python
"""Learned-pooling solve: batched LOBPCG over all output locations vs the paper's route, same run.

The paper's route (seed 001 eq. 18): per m, inv(B + αC_m) @ A, then a nonsymmetric eig. It is timed on a
sample of m and scaled to all M. Accuracy: sin of the largest principal angle between our top-2
subspace and scipy's float64 eigh(A, G_m) on a sample of m. Synthetic data (10 classes, C=64):
spatially smooth class means and within-class noise.

    python benchmarks/fit_bench.py --side 32          # N=1024, M=256
    python benchmarks/fit_bench.py --side 56          # N=3136, M=784
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from common import machine  # noqa: E402

from poolcli.learn.eigen import locality_penalty, output_grid, solve_lobpcg  # noqa: E402


def smooth(z: torch.Tensor, side: int, sigma: float = 1.5) -> torch.Tensor:
    """Blur columns of z [N, r] viewed as side×side images (Gaussian, σ in pixels)."""
    r = int(3 * sigma)
    t = torch.arange(-r, r + 1, dtype=z.dtype)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = k / k.sum()
    img = z.t().reshape(-1, 1, side, side)
    img = F.conv2d(F.pad(img, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1))
    img = F.conv2d(F.pad(img, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1))
    return img.reshape(z.shape[1], -1).t()


def problem(side: int, classes: int = 10, channels: int = 64, noise_cols: int = 4000, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    n = side * side
    centre = torch.linspace(-1, 1, side, dtype=torch.float64)
    prior = torch.exp(-(centre[:, None] ** 2 + centre[None, :] ** 2)).reshape(-1, 1)  # more variance in the centre
    means = smooth(torch.randn(n, classes * channels, generator=g, dtype=torch.float64), side, 3.0) * prior
    means = means.view(n, classes, channels)
    D = (means - means.mean(1, keepdim=True)).reshape(n, -1)  # rank (Q−1)·C
    Z = smooth(torch.randn(n, noise_cols, generator=g, dtype=torch.float64), side) * (0.5 + prior) + 0.35 * torch.randn(
        n, noise_cols, generator=g, dtype=torch.float64
    )
    B = Z @ Z.t() / noise_cols
    s = float(torch.diagonal(B).mean())
    return D / math.sqrt(s), B / s


def paper_route(A: np.ndarray, B: np.ndarray, c: np.ndarray, alpha: float) -> np.ndarray:
    G = B + alpha * np.diag(c)
    w, v = np.linalg.eig(np.linalg.inv(G) @ A)
    return np.real(v[:, np.argsort(-np.real(w))[:2]])


def sin_angle(G: np.ndarray, U: np.ndarray, V: np.ndarray) -> float:
    L = np.linalg.cholesky(G)
    qu, _ = np.linalg.qr(L.T @ U)
    qv, _ = np.linalg.qr(L.T @ V)
    s = np.linalg.svd(qu.T @ qv, compute_uv=False)
    return float(np.sqrt(max(0.0, 1 - s.min() ** 2)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--side", type=int, default=32)
    ap.add_argument("--alpha", type=str, default="1,25")
    ap.add_argument("--paper-samples", type=int, default=2)
    ap.add_argument("--check-samples", type=int, default=4)
    ap.add_argument("--tol", type=float, default=1e-10)
    a = ap.parse_args()
    side = a.side
    n = side * side
    D, B = problem(side)
    A = D @ D.t()
    out_hw = output_grid((side, side), 2)
    pen = locality_penalty((side, side), out_hw)
    m_total = pen.shape[0]
    An, Bn, Pn = A.numpy(), B.numpy(), pen.numpy()
    print(f"# fit solve, N={n} ({side}x{side}), M={m_total}, float64, pixel-unit C_m, {machine()}")
    print(
        "| α | paper route (per m, sampled) | paper route, all M (scaled) | LOBPCG all M | iterations | speed-up "
        "| max sin∠ top-2 vs eigh |"
    )
    print("|---|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    for alpha in [float(v) for v in a.alpha.split(",")]:
        sample = rng.choice(m_total, size=min(a.paper_samples, m_total), replace=False)
        t0 = time.perf_counter()
        for m in sample:
            paper_route(An, Bn, Pn[m], alpha)
        per_m = (time.perf_counter() - t0) / len(sample)
        t0 = time.perf_counter()
        res = solve_lobpcg(D, B, pen, alpha, 2, tol=a.tol)
        ours = time.perf_counter() - t0
        worst = 0.0
        for m in rng.choice(m_total, size=min(a.check_samples, m_total), replace=False):
            G = Bn + alpha * np.diag(Pn[m])
            _, v = scipy.linalg.eigh(An, G, subset_by_index=[n - 2, n - 1])
            worst = max(worst, sin_angle(G, v, res.vectors[m].numpy()))
        print(
            f"| {alpha:g} | {per_m:.3f} s | {per_m * m_total:.0f} s | {ours:.2f} s | {res.iterations} | "
            f"{per_m * m_total / ours:.0f}x | {worst:.1e} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
