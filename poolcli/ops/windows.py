"""Window geometry shared by the weighted-window pools: strided taps over a padded input.

A k×k window with stride s and padding p visits, for each tap (di, dj), the strided slice
``x_pad[..., di::s, dj::s]`` cropped to the output grid. Looping over the k² taps needs no unfold
(no k²-times copy of the input) and its backward adds into strided views in place.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F


def pair(v: int | tuple[int, ...] | list[int]) -> tuple[int, int]:
    """(h, w) from an int or a 1- or 2-sequence (torch accepts all three for kernel/stride/padding)."""
    if isinstance(v, (tuple, list)):
        return (int(v[0]), int(v[-1]))
    return (int(v), int(v))


def out_size(h: int, w: int, k: tuple[int, int], s: tuple[int, int], p: tuple[int, int]) -> tuple[int, int]:
    ho, wo = (h + 2 * p[0] - k[0]) // s[0] + 1, (w + 2 * p[1] - k[1]) // s[1] + 1
    if ho < 1 or wo < 1:
        raise ValueError(f"pooling window {k} with padding {p} does not fit a {h}×{w} input")
    return ho, wo


def pad(x: torch.Tensor, p: tuple[int, int], value: float = 0.0) -> torch.Tensor:
    return F.pad(x, (p[1], p[1], p[0], p[0]), value=value) if p != (0, 0) else x


def taps(
    k: tuple[int, int], s: tuple[int, int], p: tuple[int, int], h: int, w: int, ho: int, wo: int, device: torch.device
) -> Iterator[tuple[tuple[slice, slice], torch.Tensor | None]]:
    """Yield (slices into the padded input, validity mask [ho, wo] or None when no padding is touched)."""
    for di in range(k[0]):
        rows = torch.arange(ho, device=device) * s[0] + di - p[0]
        rvalid = (rows >= 0) & (rows < h)
        for dj in range(k[1]):
            cols = torch.arange(wo, device=device) * s[1] + dj - p[1]
            cvalid = (cols >= 0) & (cols < w)
            sl = (slice(di, di + s[0] * (ho - 1) + 1, s[0]), slice(dj, dj + s[1] * (wo - 1) + 1, s[1]))
            mask = None if bool(rvalid.all() and cvalid.all()) else (rvalid[:, None] & cvalid[None, :])
            yield sl, mask
