#!/usr/bin/env python
"""P-pooling fwd+bwd vs max_pool2d, avg_pool2d and a straightforward unfold implementation, same run.

Time: best of --repeat fwd+bwd runs. Memory: bytes each layer's autograd graph holds between forward and
backward beyond its input, α and output (counted per storage): the activation memory training pays.

    python benchmarks/ppool_bench.py [--batch 64 --channels 64 --size 56]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from common import best_time, machine, saved_bytes  # noqa: E402

from poolcli.ops import native  # noqa: E402
from poolcli.ops.ppool import p_pool2d, p_pool2d_unfold  # noqa: E402


def mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--channels", type=int, default=64)
    ap.add_argument("--size", type=int, default=56)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    print(f"# P-pooling fwd+bwd, {a.batch}x{a.channels}x{a.size}x{a.size} fp32, {machine()}")
    print(f"# p_pool2d implementation: {native.native_status()['ppool']}")
    rows = []
    print("| k/s/p | max_pool2d | avg_pool2d | p_pool2d (α map) | torch path | unfold P-pool | P-pool / max | unfold / P-pool |")
    print("|---|---|---|---|---|---|---|---|")
    for k, s, p in [(2, 2, 0), (3, 2, 1)]:
        x = torch.rand(a.batch, a.channels, a.size, a.size, requires_grad=True)
        ho = (a.size + 2 * p - k) // s + 1
        alpha = (torch.rand(a.batch, a.channels, ho, ho) * 5).requires_grad_()

        def run(fn):
            def go():
                x.grad = alpha.grad = None
                fn().sum().backward()
            return go

        layers = {
            "max_pool2d": lambda: F.max_pool2d(x, k, s, p),
            "avg_pool2d": lambda: F.avg_pool2d(x, k, s, p, count_include_pad=False),
            "p_pool2d": lambda: p_pool2d(x, alpha, k, s, p),
            "torch_path": lambda: p_pool2d(x, alpha, k, s, p, impl="torch"),
            "unfold": lambda: p_pool2d_unfold(x, alpha, k, s, p),
        }
        t = {name: best_time(run(f), a.repeat) for name, f in layers.items()}
        rows.append((f"{k}/{s}/{p}", {name: saved_bytes(f, (x, alpha))[0] for name, f in layers.items()}))
        print(f"| {k}/{s}/{p} | {t['max_pool2d'] * 1e3:.1f} ms | {t['avg_pool2d'] * 1e3:.1f} ms | {t['p_pool2d'] * 1e3:.1f} ms | "
              f"{t['torch_path'] * 1e3:.1f} ms | {t['unfold'] * 1e3:.1f} ms | {t['p_pool2d'] / t['max_pool2d']:.2f}x | {t['unfold'] / t['p_pool2d']:.2f}x |")
    print("\n| k/s/p | max_pool2d | avg_pool2d | p_pool2d | torch path | unfold P-pool |  (held for backward beyond input, α, output)")
    print("|---|---|---|---|---|---|")
    for geom, m in rows:
        print(f"| {geom} | {mib(m['max_pool2d'])} | {mib(m['avg_pool2d'])} | {mib(m['p_pool2d'])} | {mib(m['torch_path'])} | "
              f"{mib(m['unfold'])} |")


if __name__ == "__main__":
    main()
