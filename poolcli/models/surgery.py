"""Rewrite a model at dotted paths (``layer2.0.conv1``, ``<model>::adaptive_avg_pool2d``) and replay the
rewrites a checkpoint records.

A swap record is ``{"site": path, "op": name, "params": {...}, "mode": MODE, ...}`` with MODE one of:

* ``replace``  — the site (a pool module, or a functional call via torch.fx) becomes the operator;
* ``destride`` — "pool after": a strided conv runs at stride 1 with its own padding and the operator follows
  it (``grid.after_window`` keeps the grid);
* ``before``   — "pool first": the operator pools the site's *input*; a strided conv at the site runs at
  stride 1 with SAME padding (a leaf site becomes ``Sequential(op, conv)``; a block gets the operator as the
  child ``poolcli_pre`` applied by a forward pre-hook, so paths inside it do not change);
* ``stride1``  — a strided conv inside a pool-first stage runs at stride 1 with SAME padding (no operator);
* ``identity`` — a pool inside a pool-first stage becomes the identity (its work is done before the stage).

Optional keys: ``flatten`` (the replaced head pool flattened: keep doing so), ``pad`` (a :class:`grid.PadTo`
wrapper that meets a ceil-mode or SAME grid), ``global`` (a functional global call: match its output shape).
"""

from __future__ import annotations

import copy
from typing import Any

from torch import nn

from ..errors import BadInputError
from . import fxsites
from .grid import GridRule, PadTo, is_same_padded, pair
from .sites import is_pool_module, is_strided_conv

MODES = ("replace", "destride", "before", "stride1", "identity")
# containers whose forward iterates their children: a new child would run too, so pool_before wraps them
ITERATING_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


def get_submodule(model: nn.Module, path: str) -> nn.Module:
    if "::" in path:
        owner, _ = fxsites.split_site(path)
        path = owner
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
    """A copy of a strided conv that runs at stride 1 with its own padding (same weights, dilation, groups);
    a SAME-padded timm conv pads for stride 1 by itself."""
    if not is_strided_conv(conv):
        raise BadInputError(
            f"cannot destride a {type(conv).__name__}: only strided Conv2d sites run at stride 1 + pooling"
        )
    new = copy.deepcopy(conv)
    new.stride = (1, 1)
    return new


def stride1_same(conv: nn.Module) -> nn.Module:
    """A copy of a strided conv at stride 1 whose output grid equals its input grid (SAME padding: d(k−1)
    split evenly, the odd row/column at the bottom/right, as TensorFlow and timm's ``pad_same`` do)."""
    new = destrided(conv)
    if is_same_padded(new):
        return new
    k, d = pair(new.kernel_size), pair(new.dilation)
    total = [dd * (kk - 1) for kk, dd in zip(k, d)]
    if all(t % 2 == 0 for t in total):
        new.padding = (total[0] // 2, total[1] // 2)
        return new
    new.padding = (0, 0)
    pads = (total[1] // 2, total[1] - total[1] // 2, total[0] // 2, total[0] - total[0] // 2)
    return nn.Sequential(nn.ZeroPad2d(pads), new)


def _pre_pool_hook(module: nn.Module, args: tuple) -> tuple:
    return (module.poolcli_pre(args[0]), *args[1:])


def pool_before(block: nn.Module, op: nn.Module) -> nn.Module:
    """``block`` with ``op`` applied to its first input (a child ``poolcli_pre`` and a forward pre-hook).

    Containers that iterate their children (Sequential, ModuleList, ModuleDict: timm's MixedConv2d) would
    run a new child too; they become ``Sequential(op, block)`` instead (paths inside gain a ``1.``)."""
    if isinstance(block, ITERATING_CONTAINERS):
        return nn.Sequential(op, block)
    block.add_module("poolcli_pre", op)
    block.register_forward_pre_hook(_pre_pool_hook)
    return block


class FromNHWC(nn.Module):
    """Feeds a channels-last map ([B, H, W, C], timm's Swin/MaxViT heads) to an NCHW operator."""

    def __init__(self, op: nn.Module):
        super().__init__()
        self.op = op

    def forward(self, x):
        return self.op(x.permute(0, 3, 1, 2))


def wrap_op(op: nn.Module, record: dict[str, Any]) -> nn.Module:
    """The operator as it sits in the model: inside PadTo when the record asks for a run-time grid pad, behind
    a permute when the replaced pool read channels-last maps."""
    if record.get("nhwc"):
        op = FromNHWC(op)
    pad = record.get("pad")
    if pad:
        rule = GridRule(pad["kind"], tuple(pad["kernel"]), tuple(pad["stride"]), tuple(pad["padding"]))
        op = PadTo(op, tuple(record["params"]["kernel"]), tuple(record["params"]["stride"]), rule)
    return op


def apply_record(model: nn.Module, record: dict[str, Any], op: nn.Module | None) -> nn.Module | None:
    """Rewrite ``model`` as ``record`` says, with ``op`` the operator (None for stride1/identity).
    Returns what now sits at the site (for reporting)."""
    mode, path = record.get("mode", "replace"), record["site"]
    if mode not in MODES:
        raise BadInputError(
            f"unknown swap mode '{mode}' ({', '.join(MODES)}); the checkpoint may come from a newer poolcli"
        )
    if op is not None:
        op = wrap_op(op, record)
        op._poolcli_swapped = True  # what finetune trains as "the pooling" (not the convs around it)
    if "::" in path:  # a functional call: replaced through torch.fx
        if mode not in ("replace", "identity"):
            raise BadInputError(f"{path} is a functional pooling call: it can only be replaced")
        new = nn.Identity() if mode == "identity" else op
        fxsites.rewrite_call(model, path, new, bool(record.get("global", False)))
        return new
    old = get_submodule(model, path)
    if mode == "identity":
        new: nn.Module = nn.Identity()
    elif mode == "stride1":
        new = stride1_same(old)
    elif mode == "replace":
        new = op
    elif mode == "destride":
        new = nn.Sequential(destrided(old), op)
    elif is_strided_conv(old):  # before, on a conv site
        new = nn.Sequential(op, stride1_same(old))
    elif any(True for _ in old.children()) or not is_pool_module(old):  # before, on a block
        new = pool_before(old, op)
        if new is old:
            return new
    else:  # before, on a pool site: the pool's work is the operator's
        new = op
    if record.get("flatten"):
        new = nn.Sequential(new, nn.Flatten(1))
    set_submodule(model, path, new)
    return new


def swapped_operators(model: nn.Module) -> list[nn.Module]:
    """The operators that convert (or a checkpoint's replay) put into ``model``, outermost only."""
    found: list[nn.Module] = []
    for m in model.modules():
        if getattr(m, "_poolcli_swapped", False) and not any(m in set(f.modules()) for f in found):
            found.append(m)
    return found


def apply_swaps(model: nn.Module, swaps: list[dict[str, Any]], trusted: bool = False) -> None:
    """Replay a checkpoint's swap records in order (operators rebuilt from op + params; tensors come from
    the state_dict afterwards). ``trusted=False`` (a file's manifest): operator parameters never name files."""
    from ..ops.registry import build_op

    for swap in swaps:
        op = None
        if swap.get("mode", "replace") not in ("stride1", "identity"):
            replaced = None if "::" in swap["site"] else get_submodule(model, swap["site"])
            op = build_op(swap["op"], dict(swap.get("params", {})), replaced=replaced, allow_files=trusted)
        apply_record(model, swap, op)
