"""Spatially varying learned linear pooling (seed 001): Z = P X per channel, with channel normalisation.

P has shape [k, M, N] (k pooling maps per output location m, N = H·W inputs). The module scales each
channel (x − mean_c) / scale_c, applies every P_j to every channel, and maps back (· scale_c + mean_c),
giving k·C channels on the Ho×Wo output grid, ordered channel-major (c·k + j). P is a buffer (fixed)
by default, or a parameter with ``trainable=True``. The fit that produces P lives in poolcli.fit.
"""

from __future__ import annotations

import torch
from torch import nn


class LearnedLinearPool(nn.Module):
    is_poolcli_pool = True

    def __init__(
        self, channels: int, in_hw: tuple[int, int], out_hw: tuple[int, int], k: int = 2, trainable: bool = False
    ):
        super().__init__()
        self.channels, self.in_hw, self.out_hw, self.k = int(channels), tuple(in_hw), tuple(out_hw), int(k)
        n, m = self.in_hw[0] * self.in_hw[1], self.out_hw[0] * self.out_hw[1]
        weights = torch.zeros(self.k, m, n)
        if trainable:
            self.P = nn.Parameter(weights)
        else:
            self.register_buffer("P", weights)
        self.register_buffer("mean", torch.zeros(self.channels))
        self.register_buffer("scale", torch.ones(self.channels))

    @torch.no_grad()
    def set_pooling(
        self, P: torch.Tensor, mean: torch.Tensor | None = None, scale: torch.Tensor | None = None
    ) -> LearnedLinearPool:
        if tuple(P.shape) != tuple(self.P.shape):
            raise ValueError(f"pooling weights {list(P.shape)} do not fit {list(self.P.shape)}")
        self.P.copy_(P)
        if mean is not None:
            self.mean.copy_(mean)
        if scale is not None:
            self.scale.copy_(scale)
        return self

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], meta: dict, trainable: bool = False) -> LearnedLinearPool:
        """From a pooling file's contents (``poolcli.io.poolfile.read_pooling``): P, channel mean/scale, grids."""
        P = tensors["P"]
        mod = cls(
            int(tensors["channel_scale"].numel()),
            tuple(meta["in_grid"]),
            tuple(meta["out_grid"]),
            k=P.shape[0],
            trainable=trainable,
        )
        return mod.set_pooling(P, tensors["channel_mean"], tensors["channel_scale"])

    def spec_params(self) -> dict[str, int | bool]:
        """Registry params that rebuild this module's shape (its P, mean and scale live in the state_dict)."""
        return {
            "channels": self.channels,
            "in_h": self.in_hw[0],
            "in_w": self.in_hw[1],
            "out_h": self.out_hw[0],
            "out_w": self.out_hw[1],
            "k": self.k,
            "trainable": isinstance(self.P, nn.Parameter),
        }

    @classmethod
    def average(cls, channels: int, in_hw: tuple[int, int], kernel: int, stride: int) -> LearnedLinearPool:
        """P equal to average pooling with a kernel×kernel window (no padding): a reference point."""
        h, w = in_hw
        ho, wo = (h - kernel) // stride + 1, (w - kernel) // stride + 1
        mod = cls(channels, in_hw, (ho, wo), k=1)
        P = torch.zeros(1, ho * wo, h * w)
        for i in range(ho):
            for j in range(wo):
                for di in range(kernel):
                    for dj in range(kernel):
                        P[0, i * wo + j, (i * stride + di) * w + (j * stride + dj)] = 1.0 / kernel**2
        return mod.set_pooling(P)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        if (h, w) != self.in_hw or c != self.channels:
            raise ValueError(
                f"learned pooling was fitted for {self.channels}×{self.in_hw[0]}×{self.in_hw[1]} inputs, "
                f"got {c}×{h}×{w}"
            )
        mean, scale = self.mean.view(1, c, 1), self.scale.view(1, c, 1)
        xn = (x.reshape(b, c, h * w) - mean) / scale
        z = torch.einsum("kmn,bcn->bckm", self.P.to(x.dtype), xn)  # [B, C, k, M]
        z = z * scale[..., None] + mean[..., None]
        return z.reshape(b, c * self.k, *self.out_hw)

    def extra_repr(self) -> str:
        trainable = isinstance(self.P, nn.Parameter)
        return f"channels={self.channels}, in={self.in_hw}, out={self.out_hw}, k={self.k}, trainable={trainable}"


class LearnedMapPool(nn.Module):
    """Pooling with one learned spatial map per output location, the same for every channel:
    y[b, c, m] = Σ_n W[m, n] x[b, c, n], each row of W summing to 1 (constants pass through, like average
    pooling). Built from a learned pooling's top map, it pools the other branches of a stage (a ResNet
    block's strided shortcut) with the same spatial weights as the learned pooling that replaced its conv."""

    is_poolcli_pool = True

    def __init__(self, in_hw: tuple[int, int], out_hw: tuple[int, int], trainable: bool = False):
        super().__init__()
        self.in_hw, self.out_hw = tuple(int(v) for v in in_hw), tuple(int(v) for v in out_hw)
        weights = torch.zeros(self.out_hw[0] * self.out_hw[1], self.in_hw[0] * self.in_hw[1])
        if trainable:
            self.W = nn.Parameter(weights)
        else:
            self.register_buffer("W", weights)

    @classmethod
    def from_learned(cls, pool: LearnedLinearPool) -> LearnedMapPool:
        """Rows of the top map P[0], scaled to sum 1 (a row whose sum nearly cancels uses |P[0]| instead)."""
        top = pool.P.detach()[0].double()
        total = top.sum(1, keepdim=True)
        weak = total.abs() <= 1e-6 * top.abs().sum(1, keepdim=True)
        rows = torch.where(weak, top.abs() / top.abs().sum(1, keepdim=True).clamp(min=1e-300), top / total)
        mod = cls(pool.in_hw, pool.out_hw, trainable=isinstance(pool.P, nn.Parameter))
        with torch.no_grad():
            mod.W.copy_(rows.float())
        return mod

    def spec_params(self) -> dict[str, int | bool]:
        return {
            "in_h": self.in_hw[0],
            "in_w": self.in_hw[1],
            "out_h": self.out_hw[0],
            "out_w": self.out_hw[1],
            "trainable": isinstance(self.W, nn.Parameter),
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        if (h, w) != self.in_hw:
            raise ValueError(f"learned map pooling was fitted for {self.in_hw[0]}×{self.in_hw[1]} inputs, got {h}×{w}")
        return torch.einsum("mn,bcn->bcm", self.W.to(x.dtype), x.reshape(b, c, h * w)).reshape(b, c, *self.out_hw)

    def extra_repr(self) -> str:
        return f"in={self.in_hw}, out={self.out_hw}, trainable={isinstance(self.W, nn.Parameter)}"
