"""BlurPool (Zhang 2019, "Making convolutional networks shift-invariant again") with any window and padding.

timm's ``BlurPool2d`` fixes its padding from the filter size and stride, which keeps the grid only for
stride 2; this subclass takes the padding the swap needs (``poolcli.models.grid``), pads by reflection
where the map is large enough for it and by replication otherwise (reflection needs pad < size, which
fails on the 1×1 and 2×2 maps of small inputs), and keeps timm's binomial filter and buffers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import BlurPool2d as _TimmBlur

from .windows import pair


class BlurPool2d(_TimmBlur):
    is_poolcli_pool = True

    def __init__(self, channels: int, filt_size: int = 3, stride: int = 2, padding=None):
        if int(filt_size) < 2:
            raise ValueError(f"filt_size must be ≥ 2 (a 1-tap binomial filter does not blur), got {filt_size}")
        super().__init__(channels, filt_size=int(filt_size), stride=int(stride))
        p = pair((int(filt_size) - 1) // 2 if padding is None else padding)
        self.padding = [p[1], p[1], p[0], p[0]]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        mode = "reflect" if max(self.padding[2:]) < h and max(self.padding[:2]) < w else "replicate"
        if any(self.padding):
            x = F.pad(x, self.padding, mode=mode)
        return F.conv2d(x, self.filt.to(x.dtype), stride=self.stride, groups=self.channels)
