"""Batch augmentations for training (pure tensor functions, seeded by a generator)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def random_shift(
    x: torch.Tensor,
    max_shift: int,
    generator: torch.Generator | None = None,
    part: tuple[int, int, int] | None = None,
) -> torch.Tensor:
    """Translate each image by an integer offset in [-max_shift, max_shift]² with zero (replicate) padding.
    ``part`` = (global batch size, rank, world): the offsets are drawn for the whole global batch and this rank
    takes rows rank, rank + world, ... (its images of the batch), so a torchrun step shifts each image as one
    process would."""
    if max_shift <= 0:
        return x
    b, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4, mode="replicate")
    if part is None:
        off = torch.randint(0, 2 * max_shift + 1, (b, 2), generator=generator)
    else:
        total, rank, world = part
        off = torch.randint(0, 2 * max_shift + 1, (total, 2), generator=generator)[rank::world]
    rows = off[:, 0, None] + torch.arange(h)[None]  # [b, h]
    cols = off[:, 1, None] + torch.arange(w)[None]  # [b, w]
    bi = torch.arange(b)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[bi, rows[:, :, None], cols[:, None, :]]  # [b, h, w, c]
    return out.permute(0, 3, 1, 2).contiguous()
