#!/usr/bin/env python
"""Decoding + preprocessing a large photo: poolcli's photo path (PIL decode, the model's library transform:
8-bit resize, centre crop, normalise) against the previous path (the decoded image converted to float at
full size, then resized whole) and torchvision's own pipeline (decode_jpeg + weights transforms), same run.

python benchmarks/preprocess_bench.py [--size 4000x3000] [--threads 1]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from common import best_time, machine  # noqa: E402

from poolcli.data.sources import FolderImages  # noqa: E402
from poolcli.models.spec import build_model  # noqa: E402


def _photo(path: Path, w: int, h: int) -> None:
    """A real photo (scikit-learn's sample) upscaled to w×h with fine noise, saved as JPEG quality 90."""
    import sklearn

    src = Path(sklearn.__file__).parent / "datasets" / "images" / "china.jpg"
    img = Image.open(src).convert("RGB").resize((w, h), Image.BICUBIC)
    noise = (torch.rand(h, w, 3) * 16 - 8).to(torch.int16)
    arr = (torch.from_numpy(__import__("numpy").asarray(img).copy()).to(torch.int16) + noise).clamp(0, 255)
    Image.fromarray(arr.to(torch.uint8).numpy()).save(path, quality=90)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="4000x3000")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--model", default="tv:resnet18")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)  # one intra-op thread: what each DataLoader worker gets
    w, h = (int(v) for v in args.size.split("x"))
    bundle = build_model(args.model)
    c, ih, iw = bundle.input_size
    mean = torch.tensor(bundle.mean).view(c, 1, 1)
    std = torch.tensor(bundle.std).view(c, 1, 1)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "big.jpg"
        _photo(path, w, h)
        decode = FolderImages(((str(path), 0),))
        transform = bundle.transform

        def poolcli_path() -> torch.Tensor:
            return transform(decode(0))

        def previous_path() -> torch.Tensor:  # what Preprocess did before: float at full size, resize whole
            from torchvision.transforms.functional import pil_to_tensor

            x = pil_to_tensor(decode(0)).float().div_(255)
            x = F.interpolate(x[None], size=(ih, iw), mode="bilinear", align_corners=False, antialias=True)[0]
            return (x - mean) / std

        def torchvision_path() -> torch.Tensor:
            from torchvision.io import decode_jpeg, read_file
            from torchvision.models import get_model_weights

            t = get_model_weights(args.model.split(":", 1)[1]).DEFAULT.transforms()
            return t(decode_jpeg(read_file(str(path))))

        ours = best_time(poolcli_path, repeat=5)
        old = best_time(previous_path, repeat=5)
        tv = best_time(torchvision_path, repeat=5) if args.model.startswith("tv:") else float("nan")
    print(f"# {machine()}; {w}×{h} JPEG (quality 90) → {args.model} input {ih}×{iw}")
    print(f"poolcli photo path (PIL decode + library transform): {1000 * ours:7.1f} ms/image")
    print(f"previous path (float at full size, whole resize):    {1000 * old:7.1f} ms/image  ({old / ours:.2f}× ours)")
    print(f"torchvision decode_jpeg + weights transforms:        {1000 * tv:7.1f} ms/image  ({tv / ours:.2f}× ours)")


if __name__ == "__main__":
    main()
