"""Shifted copies for shift consistency (Zhang, "Making Convolutional Networks Shift-Invariant Again", ICML 2019).

Both protocols cut H×W windows out of a (H + 2S)×(W + 2S) image at offsets (oy, ox):

* large images (Zhang's ImageNet protocol, ``adobe/antialiased-cnns`` ``main.py --evaluate-shift``): the photo
  resized to H + 2S on its shorter side and centre-cropped to (H + 2S)×(W + 2S) — 256 for a 224 model with the
  default S = 16 — two offsets drawn uniformly from {0, …, 2S − 1}² (``randint(32)``);
* small images (no crop margin; CIFAR-sized): the H×W image zero-padded by S pixels on every side (black, as
  torchvision's ``RandomCrop(padding=S)`` pads) and offsets drawn from {0, …, 2S}², i.e. shifts of up to S
  pixels either way.

Offsets are drawn per *image* from a generator seeded by the run seed, the pass and the image's index (Zhang
draws one pair per batch): the numbers then do not depend on the batch size or on how torchrun splits the data.
The diagonal curve evaluates every offset (d, d), d = 0 … 2S.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

SMALL_MAX = 84  # images up to this side use the pad-and-shift protocol (the corruption tables' threshold)
DEFAULT_SHIFT = {"small": 4, "large": 16}


def protocol_for(height: int, width: int) -> str:
    return "small" if max(height, width) <= SMALL_MAX else "large"


def padded(x: torch.Tensor, s: int) -> torch.Tensor:
    """[B, C, H, W] → zero-padded [B, C, H + 2s, W + 2s] (the small-image canvas)."""
    return F.pad(x, (s, s, s, s), value=0.0)


def windows(canvas: torch.Tensor, offsets: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Per image b the window ``canvas[b, :, oy:oy+H, ox:ox+W]``; ``offsets`` int64 [B, 2] (oy, ox)."""
    h, w = size
    b = canvas.shape[0]
    rows = offsets[:, :1] + torch.arange(h)  # [B, H]
    cols = offsets[:, 1:] + torch.arange(w)  # [B, W]
    out = canvas[
        torch.arange(b)[:, None, None], :, rows[:, :, None].to(canvas.device), cols[:, None, :].to(canvas.device)
    ]
    return out.permute(0, 3, 1, 2).contiguous()  # advanced indexing put C last


def random_offsets(seeds: Sequence[int], span: int) -> torch.Tensor:
    """Two (oy, ox) pairs per image, uniform on {0, …, span − 1}², from each image's own generator: [B, 2, 2]."""
    out = torch.empty(len(seeds), 2, 2, dtype=torch.long)
    for i, s in enumerate(seeds):
        out[i] = torch.randint(span, (2, 2), generator=torch.Generator().manual_seed(int(s)))
    return out
