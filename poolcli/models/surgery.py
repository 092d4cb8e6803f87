"""Replace modules at dotted paths (``layer2.0.conv1``) and replay a checkpoint's swap list."""
from __future__ import annotations

from typing import Any

from torch import nn

from ..errors import BadInputError


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


def apply_swaps(model: nn.Module, swaps: list[dict[str, Any]]) -> None:
    """Replay ``[{"site": path, "op": name, "params": {...}}, ...]`` in order."""
    from ..ops.registry import build_op

    for swap in swaps:
        old = get_submodule(model, swap["site"])
        set_submodule(model, swap["site"], build_op(swap["op"], dict(swap.get("params", {})), replaced=old))
