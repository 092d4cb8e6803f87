#!/usr/bin/env python
"""collect throughput vs forward-only throughput of the same model and data, same run.

python benchmarks/collect_bench.py [--site @down3]
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
from poolcli.models.checkpoint import load_checkpoint  # noqa: E402
from poolcli.pipeline.collect import collect_stats  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(ROOT / "fixtures" / "digits-cnn.safetensors"))
    ap.add_argument("--sites", default="@down1,@down2,@down3")
    ap.add_argument("--batch", type=int, default=64)
    a = ap.parse_args()
    bundle = load_checkpoint(a.model)
    ds = open_dataset("digits:train", input_size=bundle.input_size, mean=bundle.mean, std=bundle.std)
    dev = torch.device("cpu")
    print(
        f"# collect vs forward, {Path(a.model).name} on digits:train ({len(ds)} images), batch {a.batch}, {machine()}"
    )
    print("| site | map C×H×W | forward img/s | collect img/s (incl. channel-scale pass) | ratio |")
    print("|---|---|---|---|---|")
    with torch.inference_mode():
        t0 = time.perf_counter()
        for x, _ in make_loader(ds, a.batch):
            bundle.module(x)
        fwd = len(ds) / (time.perf_counter() - t0)
    for site in a.sites.split(","):
        t0 = time.perf_counter()
        stats, meta = collect_stats(bundle, site, ds, device=dev, batch_size=a.batch, scale_images=256)
        col = len(ds) / (time.perf_counter() - t0)
        print(
            f"| {site} ({meta['site']}) | {meta['channels']}×{meta['grid'][0]}×{meta['grid'][1]} | "
            f"{fwd:.0f} | {col:.0f} | {col / fwd:.2f} |"
        )


if __name__ == "__main__":
    main()
