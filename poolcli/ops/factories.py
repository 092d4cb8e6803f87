"""Registrations of the built-in operators (kept apart so operator modules stay registry-free)."""
from __future__ import annotations

from typing import Any

from torch import nn

from .registry import register


def _inherit(replaced: nn.Module | None, name: str, default: Any) -> Any:
    v = getattr(replaced, name, None) if replaced is not None else None
    return default if v is None else v


@register("avg", "average pooling (kernel, stride, padding; inherited from the replaced layer)")
def _avg(p: dict[str, Any], replaced: nn.Module | None) -> nn.Module:
    k = p.pop("kernel", _inherit(replaced, "kernel_size", 2))
    s = p.pop("stride", _inherit(replaced, "stride", k))
    pad = p.pop("padding", _inherit(replaced, "padding", 0))
    return nn.AvgPool2d(k, s, pad, count_include_pad=bool(p.pop("count_include_pad", False)), **p)


@register("max", "max pooling (kernel, stride, padding; inherited from the replaced layer)")
def _max(p: dict[str, Any], replaced: nn.Module | None) -> nn.Module:
    k = p.pop("kernel", _inherit(replaced, "kernel_size", 2))
    s = p.pop("stride", _inherit(replaced, "stride", k))
    pad = p.pop("padding", _inherit(replaced, "padding", 0))
    return nn.MaxPool2d(k, s, pad, **p)
