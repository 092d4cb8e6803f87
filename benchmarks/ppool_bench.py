#!/usr/bin/env python
"""P-pooling fwd+bwd vs max_pool2d, avg_pool2d and a straightforward unfold implementation, same run.

    python benchmarks/ppool_bench.py [--batch 64 --channels 64 --size 56]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from common import best_time, machine  # noqa: E402

from poolcli.ops.ppool import p_pool2d, p_pool2d_unfold  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--channels", type=int, default=64)
    ap.add_argument("--size", type=int, default=56)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    print(f"# P-pooling fwd+bwd, {a.batch}x{a.channels}x{a.size}x{a.size} fp32, {machine()}")
    print("| k/s/p | max_pool2d | avg_pool2d | p_pool2d (α map) | unfold P-pool | P-pool / max | unfold / P-pool |")
    print("|---|---|---|---|---|---|---|")
    for k, s, p in [(2, 2, 0), (3, 2, 1)]:
        x = torch.rand(a.batch, a.channels, a.size, a.size, requires_grad=True)
        ho = (a.size + 2 * p - k) // s + 1
        alpha = (torch.rand(a.batch, a.channels, ho, ho) * 5).requires_grad_()

        def run(fn):
            def go():
                x.grad = alpha.grad = None
                fn().sum().backward()
            return go

        t_max = best_time(run(lambda: F.max_pool2d(x, k, s, p)), a.repeat)
        t_avg = best_time(run(lambda: F.avg_pool2d(x, k, s, p, count_include_pad=False)), a.repeat)
        t_pp = best_time(run(lambda: p_pool2d(x, alpha, k, s, p)), a.repeat)
        t_un = best_time(run(lambda: p_pool2d_unfold(x, alpha, k, s, p)), a.repeat)
        print(f"| {k}/{s}/{p} | {t_max * 1e3:.1f} ms | {t_avg * 1e3:.1f} ms | {t_pp * 1e3:.1f} ms | {t_un * 1e3:.1f} ms | "
              f"{t_pp / t_max:.2f}x | {t_un / t_pp:.2f}x |")


if __name__ == "__main__":
    main()
