"""Image preprocessing to a model's input size and normalisation (pure tensor maths)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def to_float(img: torch.Tensor) -> torch.Tensor:
    """uint8 [0,255] → float [0,1]; float images are taken as already in [0,1]."""
    if img.dtype == torch.uint8:
        return img.float().div_(255.0)
    return img.float()


def adapt_channels(img: torch.Tensor, channels: int) -> torch.Tensor:
    """Grey→RGB by repetition, RGB→grey by the channel mean; [.., C, H, W]."""
    c = img.shape[-3]
    if c == channels:
        return img
    if c == 1:
        return img.expand(*img.shape[:-3], channels, *img.shape[-2:]).contiguous()
    if channels == 1:
        return img.mean(dim=-3, keepdim=True)
    raise ValueError(f"cannot map {c}-channel images to {channels} channels")


class Preprocess:
    """float conversion, channel adaptation, bilinear resize (antialiased when shrinking), normalisation."""

    def __init__(self, input_size: tuple[int, int, int], mean: tuple[float, ...], std: tuple[float, ...]):
        self.input_size = tuple(int(v) for v in input_size)
        c = self.input_size[0]
        self.mean = torch.tensor(mean, dtype=torch.float32).view(c, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(c, 1, 1)

    def signature(self) -> tuple:
        """What decides the output (keys resumable jobs)."""
        return (type(self).__name__, self.input_size, self.mean.flatten().tolist(), self.std.flatten().tolist())

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        x = adapt_channels(to_float(img), self.input_size[0])
        h, w = self.input_size[1:]
        if tuple(x.shape[-2:]) != (h, w):
            shrink = x.shape[-2] > h or x.shape[-1] > w
            x = F.interpolate(
                x.unsqueeze(0), size=(h, w), mode="bilinear", align_corners=False, antialias=shrink
            ).squeeze(0)
        return (x - self.mean) / self.std
