"""P-pooling (seed 002): y = Σ x^(α+1) / Σ x^α over each window, α per output location.

Computed as a weighted average with weights w_i = exp(α (ln x_i − ln max x)): all weights lie in [0, 1]
and the window max has weight 1, so nothing overflows for any α ≥ 0 in fp32, fp16 or bf16 (half inputs
are computed in fp32 and cast back). An exact zero gets weight 0^α: 0 for α > 0, 1 for α = 0 (values below
the smallest normal float count as zero; ln 0 is a finite stand-in, see ``_log_floor``); a window of zeros
pools to 0. α = 0 is average pooling exactly
(padding excluded, like ``avg_pool2d(count_include_pad=False)``); α → ∞ is max pooling.

The backward is closed form (no autograd graph over the k² taps):
  ∂y/∂x_i = p_i (1 + α (x_i − y) / x_i)   (the 1/x term only where x > 0; at x = 0 with 0 < α < 1 the
            true derivative is unbounded, and the convention p_i = 0 gives 0: a subgradient),
  ∂y/∂α   = Σ_i p_i (ln x̃_i − ln m)(x_i − y),     p_i = w_i / Σ w.
Negative inputs: ``negative="shift"`` pools x − s and adds s back, s = min(0, min of each map)
(paper §3.2: f(R − x_min) + x_min, applied only when a map has negative values); ``"clamp"`` clips at 0.

Three implementations of the same maths: on CPU float32/float64 a fused C kernel (kernels/ppool.c, one
pass per image plane with the shift/clamp, ln x̃ and the window sums fused, see native.py); on CUDA fused
Triton kernels (ppool_triton.py); elsewhere (no C compiler, no triton, ``POOLCLI_NATIVE=0``) the torch
tap loop below. Tests hold them to each other (the Triton ones through Triton's CPU interpreter).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from . import native
from .windows import out_size, pad, pair, taps

_MODES = {"shift": 1, "clamp": 2}


def _log_floor(x: torch.Tensor) -> float:
    """The stand-in for ln 0: finite, and so negative that exp(α (ln0 − m)) is exactly 0 for any α ≥ 1e-18
    (0^α = 0) while α = 0 gives exp(0) = 1 (0^0 = 1: average pooling counts zeros)."""
    return -1e200 if x.dtype == torch.float64 else -1e20


def _log_tilde(x: torch.Tensor) -> torch.Tensor:
    """ln x, with exact zeros (and values below the smallest normal float) mapped to :func:`_log_floor`."""
    tiny = torch.finfo(x.dtype).tiny
    return torch.where(x >= tiny, torch.clamp(x, min=tiny).log(), torch.full_like(x, _log_floor(x)))


class _PPool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, alpha, k, s, p):  # x ≥ 0, float32/64; alpha broadcastable to the output
        b, c, h, w = x.shape
        ho, wo = out_size(h, w, k, s, p)
        alpha = alpha.expand(b, c, ho, wo)
        lx = _log_tilde(x)
        lm = F.max_pool2d(lx, k, s, p)  # window max of ln x̃ (padding excluded: max_pool pads with -inf)
        xp, lxp = pad(x, p), pad(lx, p, value=_log_floor(x))  # padded taps: weight ≤ 1, then masked to 0
        num = torch.zeros(b, c, ho, wo, dtype=x.dtype, device=x.device)
        den = torch.zeros_like(num)
        wt = torch.empty_like(num)
        for (si, sj), mask in taps(k, s, p, h, w, ho, wo, x.device):
            torch.sub(lxp[..., si, sj], lm, out=wt)  # in place from here on: no fresh allocations per tap
            wt.mul_(alpha).exp_()
            if mask is not None:
                wt.mul_(mask)
            num.addcmul_(wt, xp[..., si, sj])
            den.add_(wt)
        y = num / den
        ctx.save_for_backward(x, alpha, y, den, lm)
        ctx.geometry = (k, s, p)
        return y.clone()  # the saved y must not be the output: an in-place consumer (ReLU(inplace)) would change it

    @staticmethod
    @once_differentiable
    def backward(ctx, gy):
        x, alpha, y, den, lm = ctx.saved_tensors
        k, s, p = ctx.geometry
        b, c, h, w = x.shape
        ho, wo = y.shape[-2:]
        tiny = torch.finfo(x.dtype).tiny
        lxp = pad(_log_tilde(x), p, value=_log_floor(x))
        xp = pad(x, p)
        gx = torch.zeros_like(xp) if ctx.needs_input_grad[0] else None
        galpha = torch.zeros_like(y) if ctx.needs_input_grad[1] else None
        g_over_den = gy / den
        dl, gp, diff, tmp = (torch.empty_like(y) for _ in range(4))
        for (si, sj), mask in taps(k, s, p, h, w, ho, wo, x.device):
            xt = xp[..., si, sj]
            torch.sub(lxp[..., si, sj], lm, out=dl)
            torch.mul(dl, alpha, out=gp)
            gp.exp_().mul_(g_over_den)  # g · p_t
            if mask is not None:
                gp.mul_(mask)
            torch.sub(xt, y, out=diff)
            if galpha is not None:
                torch.mul(gp, dl, out=tmp)
                galpha.addcmul_(tmp, diff)
            if gx is not None:
                # g·p·(1 + α (x − y)/x), the 1/x term only where x ≥ tiny (a zero tap has p = 0 for α > 0)
                torch.clamp(xt, min=tiny, out=tmp)
                tmp.reciprocal_().mul_(diff).mul_(alpha).masked_fill_(xt < tiny, 0.0).add_(1.0).mul_(gp)
                gx[..., si, sj] += tmp
        if gx is not None and p != (0, 0):
            gx = gx[..., p[0] : p[0] + h, p[1] : p[1] + w]
        if galpha is not None:  # as the kernel and torch.clamp: no α gradient where α ≤ 0
            galpha.masked_fill_(alpha <= 0, 0.0)
        return gx, galpha, None, None, None


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _launch(step: str, x: torch.Tensor, alpha: torch.Tensor, k, s, p, mode: int, *buffers: torch.Tensor | None) -> None:
    """Run ``ppool_{step}_{f32|f64}`` over all image planes: x, α (read in place through its strides, 0 on
    broadcast dims), then ``buffers`` (outputs and gradients; None is NULL), then the geometry."""
    b, c, h, w = x.shape
    ho, wo = out_size(h, w, k, s, p)
    a = alpha.expand(b, c, ho, wo)
    fn = getattr(native.load("ppool"), f"ppool_{step}_{'f64' if x.dtype == torch.float64 else 'f32'}")
    geom = (c, h, w, ho, wo, *k, *s, *p, mode)
    ptrs = [_ptr(t) for t in buffers]
    native.run_planes(
        lambda n0, n1: fn(_ptr(x), _ptr(a), *a.stride(), *ptrs, *geom, n0, n1), b * c, ho * wo * k[0] * k[1]
    )


class _PPoolNative(torch.autograd.Function):
    """The fused CPU kernel; shift/clamp of negative inputs happens inside (mode), as do their gradients."""

    @staticmethod
    def forward(ctx, x, alpha, k, s, p, mode):
        x = x.contiguous()
        y = torch.empty(*x.shape[:2], *out_size(*x.shape[-2:], k, s, p), dtype=x.dtype)
        _launch("fwd", x, alpha, k, s, p, mode, y)
        ctx.save_for_backward(x, alpha, y)
        ctx.geom = (k, s, p, mode)
        return y.clone()  # the saved y must not be the output: an in-place consumer (ReLU(inplace)) would change it

    @staticmethod
    @once_differentiable
    def backward(ctx, gy):
        x, alpha, y = ctx.saved_tensors
        gx = torch.empty_like(x) if ctx.needs_input_grad[0] else None
        ga = torch.empty_like(y) if ctx.needs_input_grad[1] else None
        _launch("bwd", x, alpha, *ctx.geom, y, gy.contiguous(), gx, ga)
        if ga is not None:
            ga = ga.sum_to_size(alpha.shape)
        return gx, ga, None, None, None, None


def _use_native(x: torch.Tensor) -> bool:
    return x.device.type == "cpu" and x.dim() == 4 and x.numel() > 0 and native.load("ppool") is not None


def p_pool2d(
    x: torch.Tensor,
    alpha: torch.Tensor | float,
    kernel_size=2,
    stride=None,
    padding=0,
    negative: str = "shift",
    impl: str = "auto",
) -> torch.Tensor:
    """Functional P-pooling. ``alpha``: a number, or a tensor broadcastable to [B, C, Ho, Wo] (clipped at 0).

    ``impl``: "auto" (the fused C kernel on CPU, the Triton kernels on CUDA, else torch), "native" (the C
    kernel), "triton" (the Triton kernels; an error where either cannot run) or "torch" (the tap loop, any
    device).
    """
    k = pair(kernel_size)
    s = pair(stride if stride is not None else kernel_size)
    p = pair(padding)
    if min(k) < 1 or min(s) < 1 or min(p) < 0 or any(2 * pp > kk for pp, kk in zip(p, k)):
        raise ValueError(
            f"P-pooling needs kernel ≥ 1, stride ≥ 1 and 0 ≤ padding ≤ kernel/2 (as torch's pools), got "
            f"kernel={k}, stride={s}, padding={p}"
        )
    out_dtype = x.dtype
    work = torch.float64 if x.dtype == torch.float64 else torch.float32
    x = x.to(work)
    a = alpha.to(work) if isinstance(alpha, torch.Tensor) else torch.tensor(float(alpha), dtype=work, device=x.device)
    a = a.reshape(a.shape if a.dim() == 4 else (1,) * (4 - a.dim()) + tuple(a.shape))
    if negative not in _MODES:
        raise ValueError(f"negative must be 'shift' or 'clamp', not {negative!r}")
    if impl not in ("auto", "native", "triton", "torch"):
        raise ValueError(f"impl must be 'auto', 'native', 'triton' or 'torch', not {impl!r}")
    use_native = impl in ("auto", "native") and _use_native(x)
    if impl == "native" and not use_native:
        raise RuntimeError(f"native P-pooling unavailable for this input: {native.native_status()['ppool']}")
    if use_native:  # clamps α at 0 inside
        return _PPoolNative.apply(x, a, k, s, p, _MODES[negative]).to(out_dtype)
    fn = _PPool
    if impl in ("auto", "triton"):
        from . import ppool_triton

        if ppool_triton.available(x):
            fn = ppool_triton.PPoolTriton
        elif impl == "triton":
            raise RuntimeError(
                "Triton P-pooling needs a CUDA tensor and the triton package (or TRITON_INTERPRET=1 on CPU)"
            )
    a = a.clamp(min=0)
    if negative == "clamp":
        y = fn.apply(x.clamp(min=0), a, k, s, p)
    elif negative == "shift":
        shift = torch.clamp(x.amin(dim=(2, 3), keepdim=True), max=0.0)
        y = fn.apply(x - shift, a, k, s, p) + shift
    return y.to(out_dtype)


class PPool2d(nn.Module):
    """P-pooling with α predicted per output location by a side branch, or a fixed α.

    Side branch (seed 002 §3.5): depthwise conv with the pool's kernel/stride/padding → PReLU →
    depthwise 1×1 conv whose bias starts at ``alpha_init`` (so the layer starts close to max pooling),
    α clipped to [0, alpha_max].
    """

    is_poolcli_pool = True

    def __init__(
        self,
        channels: int,
        kernel_size=2,
        stride=None,
        padding=0,
        alpha: float | None = None,
        alpha_init: float = 8.0,
        alpha_max: float = 50.0,
        negative: str = "shift",
        lr_mult: float | None = None,
    ):
        super().__init__()
        self.lr_mult = lr_mult  # read by finetune's optimizer groups (None: --pool-lr-mult)
        self.kernel_size, self.stride, self.padding = pair(kernel_size), pair(stride or kernel_size), pair(padding)
        self.alpha_max, self.negative = float(alpha_max), negative
        self.fixed_alpha = alpha
        if alpha is None:
            self.branch = nn.Sequential(
                nn.Conv2d(channels, channels, self.kernel_size, self.stride, self.padding, groups=channels, bias=False),
                nn.PReLU(channels),
                nn.Conv2d(channels, channels, 1, groups=channels, bias=True),
            )
            nn.init.normal_(self.branch[0].weight, std=0.01)
            nn.init.ones_(self.branch[2].weight)
            nn.init.constant_(self.branch[2].bias, alpha_init)

    def alpha_map(self, x: torch.Tensor) -> torch.Tensor:
        if self.fixed_alpha is not None:
            return torch.tensor(float(self.fixed_alpha), dtype=x.dtype, device=x.device)
        return self.branch(x).clamp(0.0, self.alpha_max)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return p_pool2d(x, self.alpha_map(x), self.kernel_size, self.stride, self.padding, self.negative)

    def extra_repr(self) -> str:
        a = f"alpha={self.fixed_alpha}" if self.fixed_alpha is not None else f"alpha=learned[0,{self.alpha_max}]"
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, {a}"


def p_pool2d_unfold(
    x: torch.Tensor, alpha: torch.Tensor | float, kernel_size=2, stride=None, padding=0
) -> torch.Tensor:
    """Straightforward unfold (im2col) + softmax implementation, x ≥ 0: the reference and benchmark baseline."""
    k, s, p = pair(kernel_size), pair(stride or kernel_size), pair(padding)
    b, c, h, w = x.shape
    ho, wo = out_size(h, w, k, s, p)
    cols = F.unfold(x, k, padding=p, stride=s).view(b, c, k[0] * k[1], ho * wo)
    valid = F.unfold(torch.ones(1, 1, h, w, dtype=x.dtype, device=x.device), k, padding=p, stride=s).view(
        1, 1, -1, ho * wo
    )
    a = alpha if isinstance(alpha, torch.Tensor) else torch.tensor(float(alpha), dtype=x.dtype)
    a = a.expand(b, c, ho, wo).reshape(b, c, 1, ho * wo) if a.dim() else a
    logits = a * _log_tilde(cols)
    logits = logits.masked_fill(valid == 0, float("-inf"))
    return (torch.softmax(logits, dim=2) * cols).sum(2).view(b, c, ho, wo)
