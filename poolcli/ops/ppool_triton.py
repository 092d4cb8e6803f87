"""P-pooling as fused Triton kernels: the CUDA path of :func:`poolcli.ops.ppool.p_pool2d`.

The same maths as the torch tap loop and the C kernel (see :mod:`poolcli.ops.ppool`): one program per
block of output locations; for each, two passes over the k_h×k_w taps held in registers (the window max of
ln x̃, then the weights exp(α(ln x̃ − max)) and the two sums), so x is read k² times from cache and nothing
per tap is written to memory. The torch loop writes and reads ~8 full-size temporaries per tap.

Backward: per output location the tap weights are recomputed from x, α and the saved window max, ∂y/∂α is
summed in registers and ∂y/∂x is scattered with atomic adds (windows overlap when stride < kernel).
Inputs are non-negative here (the caller shifts or clamps), float32 (float16/bfloat16 are computed in
float32 by the caller, float64 in float64).

The floor of ln 0 and the smallest normal number are compile-time constants (``tl.constexpr``), not
runtime scalars: Triton passes Python floats to a GPU kernel as float32, which would turn float64's
-1e200 into -inf and its 2.2e-308 into 0.

Runs on CUDA tensors; with ``TRITON_INTERPRET=1`` (Triton's interpreter, set before this module is
imported) also on CPU tensors, which is how the tests exercise it on machines without a GPU.
"""

from __future__ import annotations

import os

import torch

try:  # triton ships with torch's CUDA wheels on Linux; without it the torch tap loop runs on CUDA
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the install
    triton = None

BLOCK = 128


def available(x: torch.Tensor) -> bool:
    """Whether the Triton kernels can run on ``x``: triton importable and x on CUDA (or the interpreter)."""
    if triton is None or x.dim() != 4 or x.numel() == 0:
        return False
    return x.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"


if triton is not None:

    @triton.jit
    def _window(offs, valid, HO, WO, H, W, SH, SW, PH, PW, i, j):
        wo = offs % WO
        t = offs // WO
        ho = t % HO
        plane = t // HO
        r = ho * SH - PH + i
        c = wo * SW - PW + j
        inb = valid & (r >= 0) & (r < H) & (c >= 0) & (c < W)
        return plane * H * W + r * W + c, inb

    @triton.jit
    def _log_tilde(xv, TINY, FLOOR):
        return tl.where(xv >= TINY, tl.log(tl.maximum(xv, TINY)), FLOOR)

    @triton.jit
    def _fwd_kernel(
        x_ptr, a_ptr, y_ptr, den_ptr, lm_ptr, total, H, W, HO, WO, SH, SW, PH, PW, TINY: tl.constexpr,
        FLOOR: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr, BLOCK: tl.constexpr,
    ):  # fmt: skip
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        valid = offs < total
        a = tl.load(a_ptr + offs, mask=valid, other=0.0)
        lm = tl.full((BLOCK,), float("-inf"), a.dtype)
        for i in tl.static_range(KH):
            for j in tl.static_range(KW):
                idx, inb = _window(offs, valid, HO, WO, H, W, SH, SW, PH, PW, i, j)
                xv = tl.load(x_ptr + idx, mask=inb, other=0.0)
                lm = tl.where(inb, tl.maximum(lm, _log_tilde(xv, TINY, FLOOR)), lm)
        num = tl.zeros((BLOCK,), a.dtype)
        den = tl.zeros((BLOCK,), a.dtype)
        for i in tl.static_range(KH):
            for j in tl.static_range(KW):
                idx, inb = _window(offs, valid, HO, WO, H, W, SH, SW, PH, PW, i, j)
                xv = tl.load(x_ptr + idx, mask=inb, other=0.0)
                wt = tl.where(inb, tl.exp(a * (_log_tilde(xv, TINY, FLOOR) - lm)), 0.0)
                num += wt * xv
                den += wt
        safe = tl.where(valid, den, 1.0)
        tl.store(y_ptr + offs, num / safe, mask=valid)
        tl.store(den_ptr + offs, den, mask=valid)
        tl.store(lm_ptr + offs, lm, mask=valid)

    @triton.jit
    def _bwd_kernel(
        x_ptr, a_ptr, y_ptr, den_ptr, lm_ptr, gy_ptr, gx_ptr, ga_ptr, total, H, W, HO, WO, SH, SW, PH, PW,
        TINY: tl.constexpr, FLOOR: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr, NEED_X: tl.constexpr,
        NEED_A: tl.constexpr, BLOCK: tl.constexpr,
    ):  # fmt: skip
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        valid = offs < total
        a = tl.load(a_ptr + offs, mask=valid, other=0.0)
        y = tl.load(y_ptr + offs, mask=valid, other=0.0)
        lm = tl.load(lm_ptr + offs, mask=valid, other=0.0)
        g = tl.load(gy_ptr + offs, mask=valid, other=0.0) / tl.load(den_ptr + offs, mask=valid, other=1.0)
        ga = tl.zeros((BLOCK,), a.dtype)
        for i in tl.static_range(KH):
            for j in tl.static_range(KW):
                idx, inb = _window(offs, valid, HO, WO, H, W, SH, SW, PH, PW, i, j)
                xv = tl.load(x_ptr + idx, mask=inb, other=0.0)
                dl = _log_tilde(xv, TINY, FLOOR) - lm
                gp = tl.where(inb, tl.exp(a * dl) * g, 0.0)  # g · p_tap
                diff = xv - y
                if NEED_A:
                    ga += gp * dl * diff
                if NEED_X:  # g·p·(1 + α (x − y)/x), the 1/x term only where x ≥ tiny
                    term = tl.where(xv >= TINY, a * diff / tl.where(xv >= TINY, xv, 1.0), 0.0)
                    tl.atomic_add(gx_ptr + idx, gp * (1.0 + term), mask=inb)
        if NEED_A:
            tl.store(ga_ptr + offs, tl.where(a <= 0.0, 0.0, ga), mask=valid)


def _geometry(x: torch.Tensor, k, s, p):
    from .windows import out_size

    h, w = x.shape[-2:]
    ho, wo = out_size(h, w, k, s, p)
    return h, w, ho, wo


def _constants(x: torch.Tensor) -> tuple[float, float]:
    from .ppool import _log_floor

    return float(torch.finfo(x.dtype).tiny), _log_floor(x)


class PPoolTriton(torch.autograd.Function):
    """Forward and closed-form backward of P-pooling (x ≥ 0, α ≥ 0 broadcastable to the output)."""

    @staticmethod
    def forward(ctx, x, alpha, k, s, p):
        x = x.contiguous()
        b, c = x.shape[:2]
        h, w, ho, wo = _geometry(x, k, s, p)
        a = alpha.expand(b, c, ho, wo).contiguous()
        y = torch.empty(b, c, ho, wo, dtype=x.dtype, device=x.device)
        den, lm = torch.empty_like(y), torch.empty_like(y)
        total = y.numel()
        tiny, floor = _constants(x)
        grid = (triton.cdiv(total, BLOCK),)
        _fwd_kernel[grid](x, a, y, den, lm, total, h, w, ho, wo, *s, *p, tiny, floor, k[0], k[1], BLOCK)
        ctx.save_for_backward(x, a, y, den, lm)
        ctx.geometry = (k, s, p, alpha.shape)
        return y.clone()  # the saved y must not be the output: an in-place consumer would change it

    @staticmethod
    def backward(ctx, gy):
        x, a, y, den, lm = ctx.saved_tensors
        k, s, p, alpha_shape = ctx.geometry
        h, w, ho, wo = _geometry(x, k, s, p)
        need_x, need_a = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        gx = torch.zeros_like(x) if need_x else x.new_empty(1)
        ga = torch.empty_like(y) if need_a else y.new_empty(1)
        total = y.numel()
        tiny, floor = _constants(x)
        grid = (triton.cdiv(total, BLOCK),)
        _bwd_kernel[grid](
            x, a, y, den, lm, gy.contiguous(), gx, ga, total, h, w, ho, wo, *s, *p, tiny, floor,
            k[0], k[1], need_x, need_a, BLOCK,
        )  # fmt: skip
        return (
            gx if need_x else None,
            ga.sum_to_size(alpha_shape) if need_a else None,
            None,
            None,
            None,
        )
