"""Classic pools: GeM, SPoC (sum, optional centre prior), MAC, R-MAC, SoftPool; BlurPool is timm's.

Global pools return [B, C, 1, 1] (flatten afterwards, like nn.AdaptiveAvgPool2d(1)).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .windows import out_size, pad, pair, taps


def gem(
    x: torch.Tensor, p: torch.Tensor | float = 3.0, eps: float = 1e-6, kernel_size=None, stride=None
) -> torch.Tensor:
    """Generalised mean (Radenović et al.): (mean x^p)^(1/p) over the whole map or over windows; x clamped at eps.

    Computed as c · (mean (x/c)^p)^(1/p) with c the map's max (detached; the mean is 1-homogeneous, so the value
    is the same): x^p cannot overflow for large activations (randomly initialised timm MobileOne reaches 1e8,
    whose cube is past float32) or in half precision."""
    xc = x.clamp(min=eps)
    c = xc.detach().amax((2, 3), keepdim=True)
    xp = (xc / c).pow(p)
    pooled = (
        F.adaptive_avg_pool2d(xp, 1) if kernel_size is None else F.avg_pool2d(xp, kernel_size, stride or kernel_size)
    )
    return pooled.pow(1.0 / p) * c  # a fresh tensor: pow saves its result, which an in-place consumer must not change


class _ExponentPool(nn.Module):
    """A pool with an exponent p, fixed or learnable (then kept ≥ 1 in the forward)."""

    is_poolcli_pool = True

    def __init__(self, p: float, learnable: bool):
        super().__init__()
        self.p = nn.Parameter(torch.tensor(float(p))) if learnable else float(p)

    def exponent(self) -> torch.Tensor | float:
        return self.p.clamp(min=1.0) if isinstance(self.p, torch.Tensor) else self.p


class GeM(_ExponentPool):
    def __init__(self, p: float = 3.0, eps: float = 1e-6, learnable: bool = True, kernel_size=None, stride=None):
        super().__init__(p, learnable)
        self.eps, self.kernel_size, self.stride = eps, kernel_size, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return gem(x, self.exponent(), self.eps, self.kernel_size, self.stride)


def lp_pool2d(x: torch.Tensor, p: torch.Tensor | float = 2.0, kernel_size=None, stride=None, padding=0) -> torch.Tensor:
    """LP pooling (Sermanet et al.; torch's LPPool): y = (Σ_window |x|^p)^(1/p); the whole map when no kernel.

    Unlike ``F.lp_pool2d`` it uses |x| (no NaN for fractional p on signed inputs), takes padding (zero
    padding adds nothing to the sum), and is computed as c · (Σ |x/c|^p)^(1/p) with c the map's max |x|
    (detached: y is 1-homogeneous, so the scale carries no gradient), so x^p cannot overflow for large p
    or in half precision. A window whose sum is 0 gives 0 with zero gradient (as torch's). p = 1 is sum
    pooling; p → ∞ is max pooling of |x|.
    """
    work = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    xa = x.to(work).abs()
    c = xa.detach().amax((2, 3), keepdim=True).clamp(min=torch.finfo(work).tiny)
    powers = (xa / c).pow(p)
    if kernel_size is None:
        total = powers.sum((2, 3), keepdim=True)
    else:
        k, s = pair(kernel_size), pair(stride or kernel_size)
        total = F.avg_pool2d(powers, k, s, pair(padding), count_include_pad=True) * (k[0] * k[1])
    positive = total > 0
    y = c * torch.where(positive, total, torch.ones_like(total)).pow(1.0 / p)
    return torch.where(positive, y, torch.zeros_like(y)).to(x.dtype)


class LPPool2d(_ExponentPool):
    """LP pooling with a fixed or learnable p (kept ≥ 1); global when ``kernel_size`` is None."""

    def __init__(self, p: float = 2.0, learnable: bool = False, kernel_size=None, stride=None, padding=0):
        super().__init__(p, learnable)
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return lp_pool2d(x, self.exponent(), self.kernel_size, self.stride, self.padding)


def spoc_centre_prior(h: int, w: int, device=None, dtype=None) -> torch.Tensor:
    """Babenko & Lempitsky's Gaussian centre prior: σ = 1/3 of the distance from the centre to the nearest border."""
    ys = torch.arange(h, device=device, dtype=dtype) - (h - 1) / 2
    xs = torch.arange(w, device=device, dtype=dtype) - (w - 1) / 2
    sigma = min(h, w) / 2 / 3
    return torch.exp(-(ys[:, None] ** 2 + xs[None, :] ** 2) / (2 * sigma**2))


class SPoC(nn.Module):
    """Sum pooling of convolutional features, optionally weighted by the centre prior."""

    is_poolcli_pool = True

    def __init__(self, centre_prior: bool = False):
        super().__init__()
        self.centre_prior = centre_prior

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x  # accumulate half inputs in fp32
        if self.centre_prior:
            xf = xf * spoc_centre_prior(*x.shape[-2:], device=x.device, dtype=xf.dtype)
        return xf.sum((2, 3), keepdim=True).to(x.dtype)


class MAC(nn.Module):
    is_poolcli_pool = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.amax((2, 3), keepdim=True).clone()  # amax saves its result for backward (in-place consumers)


def rmac_regions(h: int, w: int, levels: int = 3, overlap: float = 0.4) -> list[tuple[int, int, int, int]]:
    """R-MAC regions (Tolias et al. 2016): square regions of side 2·min(H,W)/(l+1) at scales l = 1..L,
    laid out uniformly with about ``overlap`` between neighbours; returns (top, left, height, width)."""
    side = min(h, w)
    steps = torch.arange(2, 8, dtype=torch.float64)
    b = (max(h, w) - side) / (steps - 1)
    extra = int(torch.argmin(((side**2 - side * b) / side**2 - overlap).abs())) + 1 if h != w else 0
    ex_h, ex_w = (extra, 0) if h > w else (0, extra)
    regions = [(0, 0, h, w)]
    for level in range(1, levels + 1):
        size = int(math.floor(2 * side / (level + 1)))
        if size < 1:
            break

        def starts(total: int, n_extra: int, level: int = level, size: int = size) -> list[int]:
            count = level + n_extra
            if count <= 1:
                return [max(0, (total - size) // 2)]
            step = (total - size) / (count - 1)
            return [int(round(i * step)) for i in range(count)]

        for top in starts(h, ex_h):
            for left in starts(w, ex_w):
                regions.append((top, left, size, size))
    return regions


class RMAC(nn.Module):
    """Sum over regions of L2-normalised region MACs, L2-normalised (the whole map is region 0)."""

    is_poolcli_pool = True

    def __init__(self, levels: int = 3, eps: float = 1e-6):
        super().__init__()
        self.levels, self.eps = levels, eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = torch.zeros(x.shape[:2], dtype=x.dtype, device=x.device)
        for top, left, rh, rw in rmac_regions(*x.shape[-2:], self.levels):
            v = x[:, :, top : top + rh, left : left + rw].amax((2, 3))
            total = total + v / (v.norm(dim=1, keepdim=True) + self.eps)
        return (total / (total.norm(dim=1, keepdim=True) + self.eps))[:, :, None, None]


def soft_pool2d(x: torch.Tensor, kernel_size=2, stride=None, padding=0) -> torch.Tensor:
    """SoftPool (Stergiou et al.): Σ softmax(x)·x per window, padding excluded; exact autograd gradient.

    Half inputs are pooled in float32 (Σ w·x over a window overflows fp16 near its max) and cast back.
    """
    if x.dtype in (torch.float16, torch.bfloat16):
        return soft_pool2d(x.float(), kernel_size, stride, padding).to(x.dtype)
    k, s, p = pair(kernel_size), pair(stride or kernel_size), pair(padding)
    h, w = x.shape[-2:]
    ho, wo = out_size(h, w, k, s, p)
    m = F.max_pool2d(x, k, s, p).detach()  # y is invariant to this shift; it only keeps exp() ≤ 1
    xp = pad(x, p, value=float(torch.finfo(x.dtype).min) / 4)
    num = den = 0
    for (si, sj), mask in taps(k, s, p, h, w, ho, wo, x.device):
        xt = xp[..., si, sj]
        wt = torch.exp(xt - m)
        if mask is not None:
            wt, xt = wt * mask, xt * mask
        num = num + wt * xt
        den = den + wt
    return num / den


class SoftPool2d(nn.Module):
    is_poolcli_pool = True

    def __init__(self, kernel_size=2, stride=None, padding=0):
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return soft_pool2d(x, self.kernel_size, self.stride, self.padding)
