#!/usr/bin/env python
"""GSP head fwd+bwd vs 1×1 conv + GAP (same projection), same run; memory vs solver iterations.

python benchmarks/gsp_bench.py [--batch 32 --channels 512 --size 7 --m 64]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from common import best_time, machine, saved_bytes  # noqa: E402

from poolcli.ops.gsp import GSP  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--channels", type=int, default=512)
    ap.add_argument("--size", type=int, default=7)
    ap.add_argument("--m", type=int, default=64)
    a = ap.parse_args()
    x = torch.randn(a.batch, a.channels, a.size, a.size, requires_grad=True)
    gsp = GSP(a.channels, num_prototypes=a.m)
    gsp.initialized.fill_(True)
    proj = nn.Conv2d(a.channels, a.channels, 1, bias=False)

    def base():
        x.grad = None
        proj.zero_grad()
        proj(x).mean((2, 3)).sum().backward()

    def ours():
        x.grad = None
        gsp.zero_grad()
        gsp(x).sum().backward()

    tb, tg = best_time(base, 10, 2), best_time(ours, 10, 2)
    print(f"# GSP head fwd+bwd, {a.batch}x{a.channels}x{a.size}x{a.size}, m={a.m}, μ=0.3, γ=5, {machine()}")
    print("| 1×1 conv + GAP | GSP | ratio |")
    print("|---|---|---|")
    print(f"| {tb * 1e3:.2f} ms | {tg * 1e3:.2f} ms | {tg / tb:.2f}x |")
    print("\n| solver iterations cap | saved-for-backward bytes |")
    print("|---|---|")
    for iters in (5, 20, 60, 200):
        gsp.iters = iters
        print(f"| {iters} | {saved_bytes(lambda: gsp(x).sum(), (x, *gsp.parameters()))[0]} |")


if __name__ == "__main__":
    main()
