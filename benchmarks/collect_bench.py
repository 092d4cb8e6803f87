#!/usr/bin/env python
"""collect throughput vs forward-only throughput of the same model and data, same run; and the error of
the mixed-precision statistics against the float64 path on the same images.

Each site is collected twice: ``--precision mixed`` (default: centred maps, each batch's Gram product
in float32 over the upper triangle, summed in float64) and ``float64``. Errors: ‖ΔA‖_F/‖A‖_F and
‖ΔB‖_F/‖B‖_F, and (``--fit``) the largest principal-angle sine between the top-2 pooling subspaces
fitted from each (α = 1, LOBPCG, every output cell).

python benchmarks/collect_bench.py [--sites @down1] [--fit]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import machine  # noqa: E402

from poolcli.data.specs import make_loader, open_dataset  # noqa: E402
from poolcli.learn.pooling import fit_pooling  # noqa: E402
from poolcli.models.checkpoint import load_checkpoint  # noqa: E402
from poolcli.pipeline.collect import collect_stats  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def subspace_sine(P: torch.Tensor, Q: torch.Tensor) -> float:
    """Largest sin of the principal angles between span(P[:, m]) and span(Q[:, m]) over cells m (P: [k, M, N])."""
    worst = 0.0
    for m in range(P.shape[1]):
        a = torch.linalg.qr(P[:, m].double().t())[0]
        b = torch.linalg.qr(Q[:, m].double().t())[0]
        cos = torch.linalg.svdvals(a.t() @ b).clamp(max=1)
        worst = max(worst, float((1 - cos.min() ** 2).clamp(min=0).sqrt()))
    return worst


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(ROOT / "fixtures" / "digits-cnn.safetensors"))
    ap.add_argument("--sites", default="@down1,@down2,@down3")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--fit", action="store_true", help="also compare the fitted top-2 subspaces (α = 1)")
    a = ap.parse_args()
    bundle = load_checkpoint(a.model)
    ds = open_dataset("digits:train", input_size=bundle.input_size, mean=bundle.mean, std=bundle.std)
    dev = torch.device("cpu")
    print(
        f"# collect vs forward, {Path(a.model).name} on digits:train ({len(ds)} images), batch {a.batch}, {machine()}"
    )
    print(
        "| site | map C×H×W | forward img/s | collect img/s mixed | ratio | collect img/s float64 | ratio "
        "| rel err A | rel err B | sin∠ top-2 |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    with torch.inference_mode():
        t0 = time.perf_counter()
        for x, _ in make_loader(ds, a.batch):
            bundle.module(x)
        fwd = len(ds) / (time.perf_counter() - t0)
    for site in a.sites.split(","):
        rates, scatter = {}, {}
        for precision in ("mixed", "float64"):
            t0 = time.perf_counter()
            stats, meta = collect_stats(
                bundle, site, ds, device=dev, batch_size=a.batch, scale_images=256, precision=precision
            )
            rates[precision] = len(ds) / (time.perf_counter() - t0)
            scatter[precision] = (stats.scatter(), meta)
        (d_m, b_m), meta = scatter["mixed"]
        (d_f, b_f), _ = scatter["float64"]
        sine = "–"
        if a.fit:
            grid = tuple(meta["grid"])
            p_m = fit_pooling(d_m, b_m, grid, alpha=1.0, solver="lobpcg").P
            p_f = fit_pooling(d_f, b_f, grid, alpha=1.0, solver="lobpcg").P
            sine = f"{subspace_sine(p_m, p_f):.1e}"
        print(
            f"| {site} ({meta['site']}) | {meta['channels']}×{meta['grid'][0]}×{meta['grid'][1]} | {fwd:.0f} | "
            f"{rates['mixed']:.0f} | {rates['mixed'] / fwd:.2f} | {rates['float64']:.0f} | "
            f"{rates['float64'] / fwd:.2f} | {rel(d_m @ d_m.t(), d_f @ d_f.t()):.1e} | {rel(b_m, b_f):.1e} | {sine} |"
        )


if __name__ == "__main__":
    main()
