"""Replace modules at dotted paths (``layer2.0.conv1``) and replay a checkpoint's swap list."""
from __future__ import annotations

import copy
from typing import Any

from torch import nn

from ..errors import BadInputError
from .sites import is_strided_conv


def get_submodule(model: nn.Module, path: str) -> nn.Module:
    try:
        return model.get_submodule(path)
    except AttributeError:
        raise BadInputError(f"unknown site '{path}': no such module; run 'poolcli inspect' to list the sites") from None


def set_submodule(model: nn.Module, path: str, new: nn.Module) -> nn.Module:
    """Put ``new`` at ``path``; return the module it replaced."""
    old = get_submodule(model, path)
    parent_path, _, leaf = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, leaf, new)
    return old


def destrided(conv: nn.Module) -> nn.Module:
    """A copy of a strided conv that runs at stride 1 (same weights, padding, dilation, groups)."""
    if not is_strided_conv(conv):
        raise BadInputError(f"cannot destride a {type(conv).__name__}: only strided Conv2d sites run at stride 1 + pooling")
    new = copy.deepcopy(conv)
    new.stride = (1, 1)
    return new


def build_swap(old: nn.Module, pool: nn.Module, mode: str, flatten: bool = False) -> nn.Module:
    """What goes at a site: ``pool`` itself (``replace``), or the site's conv at stride 1 then ``pool``
    (``destride``); ``flatten`` adds a Flatten after it, for heads whose pool also flattened (timm)."""
    if mode not in ("replace", "destride"):
        raise BadInputError(f"unknown swap mode '{mode}' (replace or destride); the checkpoint may come from a newer poolcli")
    new = pool if mode == "replace" else nn.Sequential(destrided(old), pool)
    return nn.Sequential(new, nn.Flatten(1)) if flatten else new


def apply_swaps(model: nn.Module, swaps: list[dict[str, Any]]) -> None:
    """Replay ``[{"site": path, "op": name, "params": {...}, "mode": "replace"|"destride"}, ...]`` in order."""
    from ..ops.registry import build_op

    for swap in swaps:
        old = get_submodule(model, swap["site"])
        pool = build_op(swap["op"], dict(swap.get("params", {})), replaced=old)
        set_submodule(model, swap["site"], build_swap(old, pool, swap.get("mode", "replace"), bool(swap.get("flatten", False))))
