"""Shifted windows for shift consistency: the centre window is the image, other offsets are zero-filled
shifts, offsets are per image and reproducible."""

from __future__ import annotations

import torch

from poolcli.robust import shift as S


def _shifted(x, dy, dx):
    """x moved by (dy, dx) with zeros coming in: the reference for a window at offset (S − dy, S − dx)."""
    out = torch.zeros_like(x)
    h, w = x.shape[-2:]
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[..., yd, xd] = x[..., ys, xs]
    return out


def test_windows_are_zero_filled_shifts():
    x = torch.rand(3, 2, 9, 7)
    s = 3
    canvas = S.padded(x, s)
    assert canvas.shape == (3, 2, 15, 13)
    assert torch.equal(S.windows(canvas, torch.full((3, 2), s), (9, 7)), x)
    offs = torch.tensor([[0, 6], [3, 1], [5, 5]])
    got = S.windows(canvas, offs, (9, 7))
    for b, (oy, ox) in enumerate(offs.tolist()):
        assert torch.equal(got[b], _shifted(x[b], s - oy, s - ox))


def test_offsets_are_per_image_and_reproducible():
    a = S.random_offsets([11, 12, 13], 9)
    b = S.random_offsets([13], 9)
    assert a.shape == (3, 2, 2) and int(a.min()) >= 0 and int(a.max()) <= 8
    assert torch.equal(a[2], b[0]) and torch.equal(S.random_offsets([11, 12, 13], 9), a)
    many = S.random_offsets(list(range(2000)), 5)
    counts = torch.bincount(many.flatten(), minlength=5).double() / many.numel()
    assert (counts - 0.2).abs().max() < 0.02  # uniform on {0..span-1}


def test_protocol_threshold():
    assert S.protocol_for(32, 32) == "small" and S.protocol_for(84, 60) == "small"
    assert S.protocol_for(224, 224) == "large" and S.protocol_for(85, 85) == "large"
