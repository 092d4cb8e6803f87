#!/usr/bin/env python
"""What evaluate --metrics robustness costs beyond the forwards: generating each corruption (per image, per
severity), each perturbation sequence (per frame) and the shift windows, against the model's forward per image
measured in the same run on the same batch (ratio < 1: generation is cheaper than the forward it feeds).

Default: the fixture (digits-cnn, 1×32×32, CIFAR table). ``--model tv:resnet18 --size 224`` measures ImageNet
sizes (random weights; the forward is what matters), on scikit-learn's sample photos cropped to 3×224×224.

python benchmarks/robustness_bench.py [--model fixtures/digits-cnn.safetensors] [--batch 128] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import best_time, machine  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from poolcli import api  # noqa: E402
from poolcli.pipeline.robustness import image_seeds  # noqa: E402
from poolcli.robust import corruptions as C  # noqa: E402
from poolcli.robust import perturbations as P  # noqa: E402
from poolcli.robust import shift as S  # noqa: E402


def _pixels(bundle, n: int) -> torch.Tensor:
    c, h, w = bundle.input_size
    if h <= 84:
        from poolcli.data.specs import open_dataset
        from poolcli.data.transforms import Preprocess

        ds = open_dataset("digits:test", transform=Preprocess((c, h, w), (0.0,) * c, (1.0,) * c), limit=n)
        return torch.stack([ds[i][0] for i in range(len(ds))])
    from sklearn.datasets import load_sample_images

    photos = [torch.from_numpy(a.copy()).permute(2, 0, 1).float() / 255 for a in load_sample_images().images]
    crops = []
    g = torch.Generator().manual_seed(0)
    for i in range(n):
        p = photos[i % len(photos)]
        y = int(torch.randint(p.shape[1] - h, (1,), generator=g))
        x = int(torch.randint(p.shape[2] - w, (1,), generator=g))
        crops.append(p[:c, y : y + h, x : x + w])
    return torch.stack(crops)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(ROOT / "fixtures" / "digits-cnn.safetensors"))
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    bundle = api.load_model(args.model)
    module = bundle.module.eval()
    x = _pixels(bundle, args.batch)
    b = x.shape[0]
    _, h, w = x.shape[1:]
    table = C.table_for(h, w)
    idx = torch.arange(b)

    @torch.inference_mode()
    def forward() -> None:
        module(bundle.transform.from_pixels(x))

    fwd = best_time(forward, args.repeat) / b
    print(f"# {machine()}; model {bundle.spec} {tuple(x.shape[1:])}, batch {b}, table {table}")
    print(f"forward: {1e3 * fwd:.3f} ms/image")
    print(f"{'alteration':<20} {'ms/image':>10} {'/ forward':>10}")
    worst = 0.0
    for name in C.CORRUPTIONS:
        if x.shape[1] == 1 and C.needs_colour(name):
            continue
        per = []
        for sev in (1, 3, 5):
            seeds = image_seeds(0, f"{name}/{sev}", idx)
            per.append(best_time(lambda n=name, s=sev, z=seeds: C.corrupt(n, x, s, z, table), args.repeat) / b)
        t = sum(per) / len(per)
        worst = max(worst, t / fwd)
        print(f"{name:<20} {1e3 * t:>10.3f} {t / fwd:>10.2f}")
    for name in P.PERTURBATIONS:
        seeds = image_seeds(0, name, idx)
        t = best_time(lambda n=name, z=seeds: P.sequence(n, x, z, table), args.repeat) / (b * P.frames(name, table))
        worst = max(worst, t / fwd)
        print(f"{'P:' + name:<20} {1e3 * t:>10.3f} {t / fwd:>10.2f}   (per frame)")
    s = S.DEFAULT_SHIFT[S.protocol_for(h, w)]
    seeds = image_seeds(0, "shift/0", idx)

    def windows() -> None:
        canvas = S.padded(x, s)
        offs = S.random_offsets(seeds, 2 * s + 1)
        S.windows(canvas, offs[:, 0], (h, w))
        S.windows(canvas, offs[:, 1], (h, w))

    t = best_time(windows, args.repeat) / (2 * b)
    print(f"{'shift window':<20} {1e3 * t:>10.3f} {t / fwd:>10.2f}")
    print(f"worst generation / forward: {worst:.2f}")


if __name__ == "__main__":
    main()
