"""Swap functional pooling calls (``F.adaptive_avg_pool2d(x, 1)``, ``x.mean((2, 3))``, ``F.max_pool2d``).

torchvision's MobileNetV2/V3, DenseNet, MnasNet, ShuffleNetV2 and Inception pool inside ``forward``
rather than through a module, so there is no module to replace. The *owning* module's ``forward`` (the one
whose code makes the call, as ``poolcli inspect`` reports it: ``owner::name``) is traced with torch.fx, with
every child module kept as a leaf (only the owner's own code is rewritten, and swaps inside children stay
path-addressable), the call node is replaced by a call to a new child module ``poolcli_fx_<name>``, and the
owner's class is replaced by a subclass whose ``forward`` is the rewritten graph's. The owner keeps every
attribute, method and state_dict key it had; the new module's tensors join the state_dict. Loading a
checkpoint replays the same rewrite from the manifest (see ``surgery.apply_swaps``).
"""

from __future__ import annotations

import torch
from torch import fx, nn

from ..errors import BadInputError

ROOT = "<model>"
_FUNCS = {"adaptive_avg_pool2d", "adaptive_max_pool2d", "max_pool2d", "avg_pool2d", "lp_pool2d"}
_REDUCE = {"mean", "amax", "sum"}


class _OwnCodeOnly(fx.Tracer):
    """Trace only the owner's own forward: every submodule is a leaf call."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:  # noqa: ARG002
        return True


def split_site(path: str) -> tuple[str, str]:
    owner, _, name = path.partition("::")
    return ("" if owner == ROOT else owner), name


def _target_name(node: fx.Node) -> str:
    if node.op == "call_method":
        return str(node.target)
    return getattr(node.target, "__name__", str(node.target)).lstrip("_")


def _spatial_dims(node: fx.Node) -> tuple[bool, bool]:
    """(reduces exactly dims 2 and 3, keepdim) for a mean/amax/sum node."""
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    keep = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
    if isinstance(dims, int):
        dims = (dims,)
    if not isinstance(dims, (tuple, list)) or not all(isinstance(d, int) for d in dims):
        return False, bool(keep)
    return sorted(d % 4 for d in dims) == [2, 3], bool(keep)


def _matches(node: fx.Node, name: str) -> bool:
    if node.op not in ("call_function", "call_method"):
        return False
    base = name.split("(")[0]
    target = _target_name(node)
    if base in _REDUCE:
        return target == base and _spatial_dims(node)[0]
    return base in _FUNCS and target == base


def trace_owner(owner: nn.Module, path: str) -> fx.GraphModule:
    try:
        graph = _OwnCodeOnly().trace(owner)
    except Exception as e:  # noqa: BLE001 - data-dependent control flow, unsupported Python, ...
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise BadInputError(
            f"the functional call at {path} cannot be swapped: its module's forward does not trace with "
            f"torch.fx ({first}); swap a module site instead (see 'poolcli inspect')"
        ) from None
    return fx.GraphModule(owner, graph, class_name=type(owner).__name__)


def find_call(owner: nn.Module, path: str) -> tuple[fx.GraphModule, fx.Node]:
    """The traced owner and the first node that makes the call named by ``path`` (``owner::name``)."""
    _, name = split_site(path)
    gm = trace_owner(owner, path)
    for node in gm.graph.nodes:
        if _matches(node, name):
            return gm, node
    raise BadInputError(
        f"no {name} call found in the forward of {path.split('::')[0]}; run 'poolcli inspect' for its sites"
    )


def call_arguments(path: str, model: nn.Module) -> tuple[str, tuple, dict]:
    """(function name, positional args less the input, kwargs) of the call at ``path`` in ``model``: for
    inheriting a pool's window."""
    owner_path, _ = split_site(path)
    _, node = find_call(model.get_submodule(owner_path) if owner_path else model, path)
    args = tuple(a for a in node.args[1:] if not isinstance(a, fx.Node))
    return _target_name(node), args, dict(node.kwargs)


class _Shaped(nn.Module):
    """Gives the new operator's output the shape the replaced call returned ([B, C] or [B, C, 1, 1])."""

    def __init__(self, op: nn.Module, flat: bool):
        super().__init__()
        self.op, self.flat = op, flat

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.op(x)
        if self.flat:
            return y.flatten(1)
        return y[:, :, None, None] if y.dim() == 2 else y


def rewrite_call(model: nn.Module, path: str, new: nn.Module, global_pool: bool) -> str:
    """Replace the call at ``path`` in ``model`` by ``new``; returns the new module's dotted path."""
    owner_path, name = split_site(path)
    owner = model.get_submodule(owner_path) if owner_path else model
    gm, node = find_call(owner, path)
    flat = False
    if name.split("(")[0] in _REDUCE:
        flat = not _spatial_dims(node)[1]
    attr = "poolcli_fx_" + name.split("(")[0]
    if hasattr(owner, attr):
        raise BadInputError(f"the call at {path} was swapped already; give one --swap per site")
    module = _Shaped(new, flat) if global_pool else new
    owner.add_module(attr, module)
    gm.add_submodule(attr, module)
    with gm.graph.inserting_after(node):
        new_node = gm.graph.call_module(attr, (node.args[0],))
    node.replace_all_uses_with(new_node)
    gm.graph.erase_node(node)
    gm.graph.lint()
    gm.recompile()
    cls = type(owner)
    patched = type(
        cls.__name__,
        (cls,),
        {
            "forward": type(gm).forward,
            "__module__": cls.__module__,
            "__qualname__": cls.__qualname__,
            "_poolcli_fx": True,
        },
    )
    owner.__class__ = patched
    return f"{owner_path}.{attr}" if owner_path else attr


def stand_in(name: str, args: tuple, kwargs: dict) -> nn.Module | None:
    """A pool module with the call's window, for operators that inherit kernel/stride/padding from what they replace."""
    from .grid import bind_pool_call

    bound = bind_pool_call(name, args, kwargs)
    if name == "max_pool2d" and "kernel_size" in bound:
        return nn.MaxPool2d(**{k: v for k, v in bound.items() if k != "return_indices"})
    if name == "avg_pool2d" and "kernel_size" in bound:
        return nn.AvgPool2d(**{k: v for k, v in bound.items() if k != "divisor_override"})
    if name.startswith("adaptive"):
        return nn.AdaptiveAvgPool2d(1)
    return None
