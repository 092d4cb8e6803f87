"""Paired comparison of two models evaluated on the same images (or queries).

* Paired bootstrap (Efron & Tibshirani 1993; Koehn 2004 for system comparisons): resample the items with
  replacement, the same draw for both models, and take the 2.5 and 97.5 percentiles of the difference of
  the means (percentile interval). Seeded; the number of resamples is recorded.
* McNemar's exact test for top-1 (McNemar 1947; the exact binomial form, Edwards 1948 without continuity
  correction): under H0 the discordant images (one model right, the other wrong) split 50/50, so the
  two-sided p-value is the binomial tail of min(b, c) out of b + c (scipy's ``binomtest``).
A difference is marked as noise when its 95% interval contains 0.
"""

from __future__ import annotations

import torch

REPS = 10_000
LEVEL = 0.95


def paired_bootstrap(
    a: torch.Tensor, b: torch.Tensor, *, reps: int = REPS, seed: int = 0, level: float = LEVEL
) -> dict:
    """Difference of means ``mean(a) − mean(b)`` of per-item scores (same items, same order) and its
    bootstrap percentile interval."""
    if a.shape != b.shape or a.dim() != 1:
        raise ValueError("paired scores must be two vectors over the same items")
    d = (a.double() - b.double()).cpu()
    n = d.numel()
    g = torch.Generator().manual_seed(seed)
    means = []
    step = max(1, min(reps, (1 << 24) // max(1, n)))  # resamples per chunk: at most 16M indices in memory
    for start in range(0, reps, step):
        idx = torch.randint(0, n, (min(step, reps - start), n), generator=g)
        means.append(d[idx].mean(1))
    dist = torch.cat(means)
    lo, hi = torch.quantile(dist, torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)).tolist()
    diff = float(d.mean())
    return {"difference": diff, "ci": [lo, hi], "level": level, "resamples": reps, "seed": seed,
            "noise": bool(lo <= 0.0 <= hi)}  # fmt: skip


def mcnemar_exact(right_a: torch.Tensor, right_b: torch.Tensor) -> dict:
    """McNemar's exact test on per-image correctness (bool vectors over the same images)."""
    from scipy.stats import binomtest

    a, b = right_a.bool().cpu(), right_b.bool().cpu()
    only_a = int((a & ~b).sum())
    only_b = int((~a & b).sum())
    n = only_a + only_b
    p = 1.0 if n == 0 else float(binomtest(min(only_a, only_b), n, 0.5).pvalue)
    return {"only_a_right": only_a, "only_b_right": only_b, "p_value": p}
