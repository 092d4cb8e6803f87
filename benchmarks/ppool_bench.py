#!/usr/bin/env python
"""P-pooling fwd+bwd vs max_pool2d, avg_pool2d and a straightforward unfold implementation, same run.

    python benchmarks/ppool_bench.py [--batch 64 --channels 64 --size 56]
    python benchmarks/ppool_bench.py --cuda          # on a GPU: p_pool2d = the Triton kernels

Time: best of --repeat fwd+bwd runs. Memory, two views:
- held for backward: bytes the autograd graph keeps between forward and backward beyond the input, α
  and the output (counted per storage) — the activation memory training pays per layer;
- peak: growth of the process's peak resident memory (VmHWM, reset just before) over one fwd+bwd,
  each layer in a fresh process with large blocks mmap'd (so no allocator cache hides anything): all
  temporaries, the output and the input/α gradients. Linux only.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from common import best_time, machine, saved_bytes  # noqa: E402

from poolcli.ops import native  # noqa: E402
from poolcli.ops.ppool import p_pool2d, p_pool2d_unfold  # noqa: E402

GEOMS = [(2, 2, 0), (3, 2, 1)]
NAMES = ["max_pool2d", "avg_pool2d", "p_pool2d", "torch_path", "unfold"]


def mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


def inputs(a, k: int, s: int, p: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.rand(a.batch, a.channels, a.size, a.size, requires_grad=True)
    ho = (a.size + 2 * p - k) // s + 1
    return x, (torch.rand(a.batch, a.channels, ho, ho) * 5).requires_grad_()


def layers(x: torch.Tensor, alpha: torch.Tensor, k: int, s: int, p: int) -> dict:
    return {
        "max_pool2d": lambda: F.max_pool2d(x, k, s, p),
        "avg_pool2d": lambda: F.avg_pool2d(x, k, s, p, count_include_pad=False),
        "p_pool2d": lambda: p_pool2d(x, alpha, k, s, p),
        "torch_path": lambda: p_pool2d(x, alpha, k, s, p, impl="torch"),
        "unfold": lambda: p_pool2d_unfold(x, alpha, k, s, p),
    }


def peak_one(a, name: str, k: int, s: int, p: int) -> None:
    """Child process: print the peak-RSS growth (bytes) of one fwd+bwd of one layer."""
    x, alpha = inputs(a, k, s, p)
    native.load("ppool")  # the kernel library's own pages are not the layer's memory
    fn = layers(x, alpha, k, s, p)[name]
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS (Linux ≥ 4.0)
    before = _status_kib("VmRSS")
    fn().sum().backward()
    print((_status_kib("VmHWM") - before) * 1024)


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def peak(a, name: str, k: int, s: int, p: int) -> int:
    cmd = [
        sys.executable,
        __file__,
        "--peak-one",
        name,
        f"{k},{s},{p}",
        "--batch",
        str(a.batch),
        "--channels",
        str(a.channels),
        "--size",
        str(a.size),
    ]
    # every block ≥ 64 KiB gets its own mapping, returned on free: no reuse of heap the import left behind
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    return int(subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout.split()[-1])


def cuda_main(a) -> None:
    """Times on CUDA (synchronised): max/avg pool, P-pooling through the Triton kernels, the torch tap loop
    and unfold."""
    dev = torch.device("cuda")
    print(f"# P-pooling fwd+bwd on {torch.cuda.get_device_name()}, {a.batch}x{a.channels}x{a.size}x{a.size} fp32")
    print(
        "| k/s/p | max_pool2d | avg_pool2d | p_pool2d (Triton) | torch path | unfold | P-pool / max | torch / Triton |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for k, s, p in GEOMS:
        x, alpha = (t.detach().to(dev).requires_grad_() for t in inputs(a, k, s, p))
        fns = layers(x, alpha, k, s, p)
        fns["p_pool2d"] = lambda x=x, alpha=alpha, k=k, s=s, p=p: p_pool2d(x, alpha, k, s, p, impl="triton")

        def run(fn, x=x, alpha=alpha):
            def go():
                x.grad = alpha.grad = None
                fn().sum().backward()
                torch.cuda.synchronize()

            return go

        t = {name: best_time(run(f), max(a.repeat, 10), warmup=3) for name, f in fns.items()}
        print(
            f"| {k}/{s}/{p} | " + " | ".join(f"{t[n] * 1e3:.2f} ms" for n in NAMES) + f" | "
            f"{t['p_pool2d'] / t['max_pool2d']:.2f}x | {t['torch_path'] / t['p_pool2d']:.1f}x |"
        )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--channels", type=int, default=64)
    ap.add_argument("--size", type=int, default=56)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--peak-one", nargs=2, metavar=("LAYER", "K,S,P"), help=argparse.SUPPRESS)
    ap.add_argument("--cuda", action="store_true", help="time on the GPU (the Triton kernels)")
    a = ap.parse_args()
    if a.cuda:
        cuda_main(a)
        return
    if a.peak_one:
        peak_one(a, a.peak_one[0], *map(int, a.peak_one[1].split(",")))
        return
    print(f"# P-pooling fwd+bwd, {a.batch}x{a.channels}x{a.size}x{a.size} fp32, {machine()}")
    print(f"# p_pool2d implementation: {native.native_status()['ppool']}")
    held, peaks = {}, {}
    print(
        "| k/s/p | max_pool2d | avg_pool2d | p_pool2d (α map) | torch path | unfold P-pool | P-pool / max "
        "| unfold / P-pool |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for k, s, p in GEOMS:
        x, alpha = inputs(a, k, s, p)
        fns = layers(x, alpha, k, s, p)

        def run(fn, x=x, alpha=alpha):
            def go():
                x.grad = alpha.grad = None
                fn().sum().backward()

            return go

        t = {name: best_time(run(f), a.repeat) for name, f in fns.items()}
        held[(k, s, p)] = {name: saved_bytes(f, (x, alpha))[0] for name, f in fns.items()}
        print(
            f"| {k}/{s}/{p} | {t['max_pool2d'] * 1e3:.1f} ms | {t['avg_pool2d'] * 1e3:.1f} ms | "
            f"{t['p_pool2d'] * 1e3:.1f} ms | "
            f"{t['torch_path'] * 1e3:.1f} ms | {t['unfold'] * 1e3:.1f} ms | {t['p_pool2d'] / t['max_pool2d']:.2f}x | "
            f"{t['unfold'] / t['p_pool2d']:.2f}x |"
        )
        del x, alpha, fns
        peaks[(k, s, p)] = {name: peak(a, name, k, s, p) for name in NAMES}
    for title, table in (
        ("held for backward beyond input, α, output", held),
        ("peak memory growth over one fwd+bwd", peaks),
    ):
        print(f"\n{title}:\n\n| k/s/p | max_pool2d | avg_pool2d | p_pool2d | torch path | unfold P-pool |")
        print("|---|---|---|---|---|---|")
        for (k, s, p), m in table.items():
            print(f"| {k}/{s}/{p} | " + " | ".join(mib(m[n]) for n in NAMES) + " |")


if __name__ == "__main__":
    main()
