"""Output-grid arithmetic of strided sites, and the windows that keep a site's grid after a swap.

Every downsampling site maps an input size H to an output size by one of three rules:

* ``floor`` — ``nn.Conv2d``, and pools with ``ceil_mode=False``: ⌊(H + 2p − d(k−1) − 1)/s⌋ + 1;
* ``ceil``  — pools with ``ceil_mode=True``: ⌈(H + 2p − k)/s⌉ + 1, less one when the last window would
  start in the right padding (PyTorch's rule, ``torch.nn.MaxPool2d`` docs);
* ``same``  — TensorFlow "SAME" padding computed at run time (timm's ``Conv2dSame``,
  ``ScaledStdConv2dSame``, ``MaxPool2dSame``, ``AvgPool2dSame``): ⌈H/s⌉.

Two facts make grid-keeping swaps possible at every input size (both proved over many sizes in the tests):

1. *Pool after a stride-1 copy of a conv.* The stride-1 conv gives H' = H + 2p − d(k−1) (or H' = H for a
   SAME conv), and a centred odd window w = 2q + 1 with padding q and stride s gives ⌊(H' − 1)/s⌋ + 1, which
   is the floor rule of the original conv (and ⌈H/s⌉ = ⌊(H − 1)/s⌋ + 1 for SAME).
2. *Pool before (the stage's input).* A window equal to the conv's effective window d(k−1)+1 with the conv's
   padding p and stride s reproduces the floor rule exactly; a centred odd window reproduces it whenever the
   conv is itself centred (2p = d(k−1)), and always reproduces SAME.

The ceil rule cannot be met by static symmetric padding; pools that have no ``ceil_mode`` get it through
:class:`PadTo`, which adds the missing rows/columns at the bottom/right at run time.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..ops.windows import pair

_SAME_CLASSES = {"Conv2dSame", "ScaledStdConv2dSame", "MaxPool2dSame", "AvgPool2dSame", "StdConv2dSame"}


def floor_out(h: int, k: int, s: int, p: int, d: int = 1) -> int:
    return (h + 2 * p - d * (k - 1) - 1) // s + 1


def ceil_out(h: int, k: int, s: int, p: int, d: int = 1) -> int:
    out = -(-(h + 2 * p - d * (k - 1) - 1) // s) + 1
    if (out - 1) * s >= h + p:  # the last window must start inside the input or the left padding
        out -= 1
    return out


def same_out(h: int, s: int) -> int:
    return -(-h // s)


def centred_odd(stride: int) -> int:
    """The smallest odd window ≥ the stride (3 for stride 2): what BlurPool and ResNet's stem pool use."""
    return stride if stride % 2 else stride + 1


@dataclasses.dataclass(frozen=True)
class GridRule:
    """How one site maps an input size to its output size, per dimension."""

    kind: str  # floor | ceil | same
    kernel: tuple[int, int]  # effective window d(k−1)+1
    stride: tuple[int, int]
    padding: tuple[int, int]

    def out(self, h: int, w: int) -> tuple[int, int]:
        dims = []
        for i, n in enumerate((h, w)):
            k, s, p = self.kernel[i], self.stride[i], self.padding[i]
            dims.append(
                same_out(n, s) if self.kind == "same" else (ceil_out if self.kind == "ceil" else floor_out)(n, k, s, p)
            )
        return dims[0], dims[1]

    @property
    def centred(self) -> bool:
        """True when any centred odd window with this stride reproduces the rule (SAME, or 2p = k − 1)."""
        return self.kind == "same" or (
            self.kind == "floor" and all(2 * p == k - 1 for k, p in zip(self.kernel, self.padding))
        )

    def before_window(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """(window, padding) of a pool on the site's *input* that gives the site's grid (floor/same rules)."""
        if self.centred:
            return after_window(self.stride)
        return self.kernel, self.padding


def after_window(stride: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """(window, padding) of a pool that follows a stride-1 copy of a floor/SAME conv and keeps its grid."""
    w = tuple(centred_odd(s) for s in stride)
    return w, tuple((x - 1) // 2 for x in w)  # type: ignore[return-value]


def is_same_padded(m: nn.Module) -> bool:
    return type(m).__name__ in _SAME_CLASSES


def rule_of(m: nn.Module) -> GridRule | None:
    """The grid rule of a strided conv or local pool module (None for anything else)."""
    k = getattr(m, "kernel_size", None)
    s = getattr(m, "stride", None)
    if k is None or s is None:
        return None
    k, s = pair(k), pair(s if s is not None else k)
    d = pair(getattr(m, "dilation", 1) or 1)
    keff = tuple(dd * (kk - 1) + 1 for kk, dd in zip(k, d))
    pad = getattr(m, "padding", 0)
    if is_same_padded(m):
        return GridRule("same", keff, s, (0, 0))  # type: ignore[arg-type]
    if isinstance(pad, str):  # nn.Conv2d(padding="same"|"valid"): "same" is only legal at stride 1
        pad = (0, 0) if pad == "valid" else tuple((x - 1) // 2 for x in keff)
    kind = "ceil" if getattr(m, "ceil_mode", False) else "floor"
    return GridRule(kind, keff, s, pair(pad))  # type: ignore[arg-type]


_CALL_ARGS = {  # positional parameters after the input, as torch.nn.functional declares them
    "max_pool2d": ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"),
    "avg_pool2d": ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override"),
    "lp_pool2d": ("norm_type", "kernel_size", "stride", "ceil_mode"),
}


def bind_pool_call(name: str, args: tuple, kwargs: dict) -> dict[str, Any]:
    """Named arguments of a functional ``max_pool2d``/``avg_pool2d``/``lp_pool2d`` call (input left out of
    ``args``); {} for other calls (adaptive pools, spatial reductions)."""
    names = _CALL_ARGS.get(name)
    if names is None:
        return {}
    bound = dict(zip(names, args))
    bound.update(kwargs)
    return bound


def rule_of_call(name: str, args: tuple, kwargs: dict) -> GridRule | None:
    """The grid rule of a functional ``max_pool2d``/``avg_pool2d`` call (input left out of ``args``)."""
    bound = bind_pool_call(name, args, kwargs)
    if "kernel_size" not in bound:
        return None
    k = pair(bound["kernel_size"])
    s = pair(bound.get("stride") or k)
    d = pair(bound.get("dilation", 1) or 1)
    keff = tuple(dd * (kk - 1) + 1 for kk, dd in zip(k, d))
    return GridRule("ceil" if bound.get("ceil_mode") else "floor", keff, s, pair(bound.get("padding", 0)))  # type: ignore[arg-type]


class PadTo(nn.Module):
    """Pads its input at run time so that ``inner`` (a pool with window ``kernel``, stride ``stride`` and no
    padding of its own) produces the grid of ``rule`` — for a ceil-mode or SAME site replaced by an operator
    that has neither. Padding repeats the border (``replicate``): it adds no new value to a max, and a
    weighted pool sees the edge pixel twice rather than a zero."""

    def __init__(self, inner: nn.Module, kernel: tuple[int, int], stride: tuple[int, int], rule: GridRule):
        super().__init__()
        self.inner, self.kernel, self.stride = inner, pair(kernel), pair(stride)
        self.rule_kind, self.rule_kernel, self.rule_padding = rule.kind, rule.kernel, rule.padding

    def pads(self, h: int, w: int) -> tuple[int, int, int, int]:
        rule = GridRule(self.rule_kind, self.rule_kernel, self.stride, self.rule_padding)
        out = rule.out(h, w)
        sides = []
        for i, n in enumerate((h, w)):
            total = max((out[i] - 1) * self.stride[i] + self.kernel[i] - n, 0)
            first = total // 2 if self.rule_kind == "same" else min(self.rule_padding[i], total)
            sides.append((first, total - first))
        return sides[1][0], sides[1][1], sides[0][0], sides[0][1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = self.pads(*x.shape[-2:])
        if any(pads):
            x = F.pad(x, pads, mode="replicate")
        return self.inner(x)

    def extra_repr(self) -> str:
        return f"rule={self.rule_kind}, kernel={self.kernel}, stride={self.stride}"


def window_area(kernel: Any) -> int:
    k = pair(kernel)
    return k[0] * k[1]
