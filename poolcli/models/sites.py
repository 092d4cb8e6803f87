"""Find pooling and downsampling sites by running one forward pass and recording what executes.

Forward pre/post hooks on every module keep a module stack and shapes; a ``TorchFunctionMode``
records functional pooling (``F.*pool*``, spatial ``mean``/``amax``/``sum``) with the enclosing
module. Only what executes is listed (defined-but-unused pools are reported separately), modules
called more than once are flagged, and a global pool whose output is followed by more spatial work
(a squeeze-excite gate) is flagged ``internal-global`` rather than listed as the head pool.

Aliases: ``@global`` is the head pool; ``@downK`` is the K-th resolution-reducing stage in forward
order (sites that map the same input grid to the same output grid, like a ResNet block's strided
conv and its strided shortcut, form one stage; its first site is the primary one).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from ..errors import BadInputError
from ..ops.windows import pair
from .grid import bind_pool_call

_POOL_MODULES: tuple[type, ...] = (
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
    nn.LPPool2d,
    nn.FractionalMaxPool2d,
)
_POOL_MODULE_NAMES = {  # timm and poolcli classes, matched by name to avoid hard imports
    "SelectAdaptivePool2d",
    "MaxPool2dSame",
    "AvgPool2dSame",
    "BlurPool2d",
    "AdaptiveAvgMaxPool2d",
    "AdaptiveCatAvgMaxPool2d",
    "FastAdaptiveAvgPool",
    "LsePlus2d",
    "SimPool2d",
    "AttentionPool2d",
}
_POOL_FUNCS = {
    F.max_pool2d: "max_pool2d",
    F.avg_pool2d: "avg_pool2d",
    F.adaptive_avg_pool2d: "adaptive_avg_pool2d",
    F.adaptive_max_pool2d: "adaptive_max_pool2d",
    F.lp_pool2d: "lp_pool2d",
    torch.max_pool2d: "max_pool2d",
}
_REDUCE_FUNCS = {
    torch.Tensor.mean: "mean",
    torch.mean: "mean",
    torch.Tensor.amax: "amax",
    torch.amax: "amax",
    torch.Tensor.sum: "sum",
    torch.sum: "sum",
}


def is_pool_module(m: nn.Module) -> bool:
    if isinstance(m, _POOL_MODULES):
        return True
    return type(m).__name__ in _POOL_MODULE_NAMES or bool(getattr(m, "is_poolcli_pool", False))


def is_channels_last_pool(m: nn.Module) -> bool:
    """timm pools that read [B, H, W, C] maps (``input_fmt="NHWC"``: Swin, MaxViT heads); timm keeps the
    format in the inner pool as its reduction dims (1, 2)."""
    for sub in m.modules():
        if str(getattr(sub, "input_fmt", "")).upper() == "NHWC" or tuple(getattr(sub, "dim", ()) or ()) == (1, 2):
            return True
    return False


def is_strided_conv(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d) and max(pair(m.stride)) > 1


@dataclasses.dataclass
class Site:
    path: str
    kind: str  # local-pool | strided-conv | global-pool | functional-pool
    op: str
    in_shape: list[int]  # [C, H, W], batch excluded
    out_shape: list[int]
    kernel: list[int] | None = None
    stride: list[int] | None = None
    macs: int = 0
    calls: int = 1
    role: str = ""  # downsample | head-global | internal-global | shape-preserving | upsample
    alias: str | None = None
    stage: int | None = None
    swappable_by: str = "module"
    order: int = 0

    @property
    def out_hw(self) -> tuple[int, int]:
        """Output grid; a flattened [C] output (a pool with built-in flatten) counts as 1×1."""
        return (self.out_shape[1], self.out_shape[2]) if len(self.out_shape) == 3 else (1, 1)

    @property
    def reduction(self) -> float:
        return self.in_shape[1] / max(self.out_hw[0], 1) if len(self.in_shape) == 3 else 1.0

    @property
    def is_global(self) -> bool:
        """A pool to 1×1: a global pool module (even on a 1×1 input, as a head pool at a small input size
        is), or a pooling that reduces a grid to 1×1. A strided conv that lands on 1×1 is a downsample."""
        if self.kind == "global-pool":
            return True
        in_hw = self.in_shape[1] * self.in_shape[2] if len(self.in_shape) == 3 else 1
        if self.kind == "strided-conv" or self.out_hw != (1, 1) or in_hw <= 1:
            return False
        if self.kernel and len(self.in_shape) == 3:  # a windowed pool is global only when its window covers the map
            return self.kernel[0] >= self.in_shape[1] and self.kernel[1] >= self.in_shape[2]
        return True

    def to_dict(self, total_macs: int) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["reduction"] = self.reduction
        d["macs_share"] = self.macs / total_macs if total_macs else 0.0
        return d


@dataclasses.dataclass
class SiteReport:
    sites: list[Site]
    total_macs: int
    input_size: tuple[int, int, int]
    unused_pools: list[str]
    stages: dict[str, list[str]]  # "@down1" -> [paths]

    def aliases(self) -> dict[str, str]:
        out = {s.alias: s.path for s in self.sites if s.alias}
        return dict(sorted(out.items(), key=lambda kv: (kv[0] != "@global", kv[0])))

    def resolve(self, text: str, model: nn.Module | None = None) -> Site:
        """A site from an alias (``@global``, ``@down2``) or a module path."""
        if text.startswith("@"):
            for s in self.sites:
                if s.alias == text:
                    return s
            known = ", ".join(self.aliases()) or "none"
            raise BadInputError(f"unknown site alias '{text}'; this model has {known} (see 'poolcli inspect')")
        for s in self.sites:
            if s.path == text:
                return s
        if model is not None and text in dict(model.named_modules()) and text:
            return Site(
                path=text, kind="module", op=type(model.get_submodule(text)).__name__, in_shape=[], out_shape=[]
            )
        raise BadInputError(
            f"unknown site '{text}': not a module of this model; run 'poolcli inspect' to list sites and aliases"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "input_size": list(self.input_size),
            "total_macs": self.total_macs,
            "aliases": self.aliases(),
            "stages": self.stages,
            "sites": [s.to_dict(self.total_macs) for s in self.sites],
            "unused_pool_modules": self.unused_pools,
        }


def _shape(t: Any) -> list[int]:
    return list(t.shape[1:]) if isinstance(t, torch.Tensor) else []


def _first_tensor(args: tuple) -> Any:
    for a in args:
        if isinstance(a, torch.Tensor):
            return a
    return None


class _Recorder(TorchFunctionMode):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.names = {m: n for n, m in model.named_modules()}
        self.stack: list[nn.Module] = []
        self.calls: dict[str, int] = {}
        self.clock = 0
        self.spatial_events: list[tuple[int, int]] = []  # (time, input H*W) of every leaf module call
        self.sites: list[tuple[int, Site]] = []
        self.site_by_path: dict[str, Site] = {}
        self.macs_total = 0
        self.handles = []
        for m in model.modules():
            self.handles.append(m.register_forward_pre_hook(self._pre))
            self.handles.append(m.register_forward_hook(self._post))

    def close(self) -> None:
        for h in self.handles:
            h.remove()

    def _inside_pool(self) -> bool:
        return any(is_pool_module(m) for m in self.stack)

    def _pre(self, m: nn.Module, args: tuple) -> None:
        self.stack.append(m)

    def _post(self, m: nn.Module, args: tuple, out: Any) -> None:
        self.stack.pop()
        self.clock += 1
        path = self.names.get(m, "?")
        self.calls[path] = self.calls.get(path, 0) + 1
        x = _first_tensor(args)
        y = out if isinstance(out, torch.Tensor) else _first_tensor(out if isinstance(out, tuple) else ())
        leaf = not any(True for _ in m.children())
        if leaf and isinstance(x, torch.Tensor) and x.dim() == 4:
            self.spatial_events.append((self.clock, int(x.shape[2] * x.shape[3])))
        macs = _module_macs(m, x, y)
        if leaf:
            self.macs_total += macs
        if not (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor) and x.dim() == 4):
            return
        if path in self.site_by_path:
            self.site_by_path[path].calls += 1
            return
        if is_pool_module(m) and not any(is_pool_module(p) for p in self.stack):
            in_shape = _shape(x)
            if is_channels_last_pool(m) and len(in_shape) == 3:  # timm's Swin/MaxViT heads
                in_shape = [in_shape[2], in_shape[0], in_shape[1]]
            site = Site(
                path=path,
                kind="local-pool",
                op=type(m).__name__,
                in_shape=in_shape,
                out_shape=_shape(y),
                kernel=_attr_pair(m, "kernel_size"),
                stride=_attr_pair(m, "stride"),
                macs=macs,
            )
            if site.is_global or ("Adaptive" in type(m).__name__ and site.out_hw == (1, 1)):
                site.kind = "global-pool"
        elif is_strided_conv(m) and not self._inside_pool():  # a pooling operator's own side branch is not a site
            site = Site(
                path=path,
                kind="strided-conv",
                op="Conv2d",
                in_shape=_shape(x),
                out_shape=_shape(y),
                kernel=list(pair(m.kernel_size)),
                stride=list(pair(m.stride)),
                macs=macs,
            )
        else:
            return
        self.site_by_path[path] = site
        self.sites.append((self.clock, site))

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = _POOL_FUNCS.get(func)
        if name is None and func in _REDUCE_FUNCS:
            name = _spatial_reduce_name(func, args, kwargs)
        if name is None or self._inside_pool():
            return out
        x = args[0] if args else kwargs.get("input")
        if not (isinstance(x, torch.Tensor) and x.dim() == 4 and isinstance(out, torch.Tensor)):
            return out
        self.clock += 1
        owner = self.names.get(self.stack[-1], "") if self.stack else ""
        path = f"{owner or '<model>'}::{name}"
        y_shape = _shape(out)
        if len(y_shape) == 1:  # mean over (2,3) without keepdim
            y_shape = y_shape + [1, 1]
        if path in self.site_by_path:
            self.site_by_path[path].calls += 1
            return out
        window = _call_window(name, args, kwargs)
        site = Site(
            path=path,
            kind="functional-pool",
            op=name,
            in_shape=_shape(x),
            out_shape=y_shape,
            macs=int(x[0].numel()),
            swappable_by="none",
            kernel=window[0],
            stride=window[1],
        )
        self.site_by_path[path] = site
        self.sites.append((self.clock, site))
        return out


def _call_window(name: str, args: tuple, kwargs: dict) -> tuple[list[int] | None, list[int] | None]:
    """(kernel, stride) of a functional max/avg/lp pool call; (None, None) for adaptive pools and reductions."""
    bound = bind_pool_call(name, args[1:], kwargs)
    try:
        k = list(pair(bound["kernel_size"]))
        return k, list(pair(bound.get("stride") or k))
    except (KeyError, TypeError, ValueError):
        return None, None


def _attr_pair(m: nn.Module, name: str) -> list[int] | None:
    v = getattr(m, name, None)
    if v is None:
        return None
    try:
        return list(pair(v))
    except (TypeError, ValueError):
        return None


def _spatial_reduce_name(func, args: tuple, kwargs: dict) -> str | None:
    x = args[0] if args else kwargs.get("input")
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        return None
    dims = args[1] if len(args) > 1 else kwargs.get("dim")
    if dims is None or isinstance(dims, torch.dtype):
        return None
    dims = (dims,) if isinstance(dims, int) else tuple(dims)
    if sorted(d % 4 for d in dims) == [2, 3]:
        return f"{_REDUCE_FUNCS[func]}(2,3)"
    return None


def _module_macs(m: nn.Module, x: Any, y: Any) -> int:
    """Multiply-accumulates of one call (1 MAC = 1 fused multiply-add; pools: one op per window tap)."""
    if not isinstance(y, torch.Tensor):
        return 0
    if isinstance(m, nn.Conv2d):
        kh, kw = pair(m.kernel_size)
        return int(y[0].numel() * (m.in_channels // m.groups) * kh * kw)
    if isinstance(m, nn.Linear):
        return int(y[0].numel() * m.in_features)
    if is_pool_module(m) and isinstance(x, torch.Tensor) and x.dim() == 4:
        return int(x[0].numel())
    return 0


def discover_sites(
    model: nn.Module, input_size: tuple[int, int, int], device: str | torch.device = "cpu"
) -> SiteReport:
    """Run one forward pass at ``input_size`` (batch 1, eval mode) and list the sites."""
    was_training = model.training
    model.eval()
    x = torch.randn(1, *input_size, generator=torch.Generator().manual_seed(0)).to(device)
    rec = _Recorder(model)
    try:
        with torch.no_grad(), rec:
            model(x)
    except (RuntimeError, AssertionError, ValueError, IndexError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise BadInputError(
            f"the model does not run on a {'x'.join(map(str, input_size))} input ({first}); pass a fitting --input-size"
        ) from None
    finally:
        rec.close()
        model.train(was_training)
    sites = [s for _, s in sorted(rec.sites, key=lambda t: t[0])]
    ends = {id(s): t for t, s in rec.sites}
    for i, s in enumerate(sites):
        s.order = i
        s.calls = max(s.calls, rec.calls.get(s.path, 1))
    _mark_fx(model, sites)
    _assign_roles(sites, ends, rec.spatial_events)
    stages = _assign_stages(sites)
    called = set(rec.calls)
    unused = [
        n for n, m in model.named_modules() if n and n not in called and (is_pool_module(m) or is_strided_conv(m))
    ]
    return SiteReport(
        sites=sites, total_macs=rec.macs_total, input_size=tuple(input_size), unused_pools=unused, stages=stages
    )


def _mark_fx(model: nn.Module, sites: list[Site]) -> None:
    """Functional sites become ``swappable_by="fx"`` when their owner's own forward traces with torch.fx and
    makes such a call (``convert`` rewrites exactly that call; see ``fxsites``)."""
    from . import fxsites

    for s in sites:
        if s.kind != "functional-pool":
            continue
        owner_path, _ = fxsites.split_site(s.path)
        try:
            owner = model.get_submodule(owner_path) if owner_path else model
            fxsites.find_call(owner, s.path)
        except Exception:  # noqa: BLE001 - untraceable owners (control flow, dynamic shapes) stay "none"
            continue
        s.swappable_by = "fx"


def _assign_roles(sites: list[Site], ends: dict[int, int], events: list[tuple[int, int]]) -> None:
    head: Site | None = None
    for s in sites:
        if s.is_global:
            t = ends[id(s)]
            later_spatial = any(time > t and hw > 1 for time, hw in events)
            s.role = "internal-global" if later_spatial else "head-global"
            if s.role == "head-global":
                head = s
        elif len(s.in_shape) == 3 and s.out_hw[0] * s.out_hw[1] < s.in_shape[1] * s.in_shape[2]:
            s.role = "downsample"
        elif len(s.in_shape) == 3 and list(s.out_hw) == s.in_shape[1:]:
            s.role = "shape-preserving"
        else:
            s.role = "upsample"
    if head is not None:
        head.alias = "@global"


def _assign_stages(sites: list[Site]) -> dict[str, list[str]]:
    keys: list[tuple[int, ...]] = []
    stages: dict[str, list[str]] = {}
    for s in sites:
        if s.role != "downsample":
            continue
        key = tuple(s.in_shape[1:]) + tuple(s.out_hw)
        if key not in keys:
            keys.append(key)
            s.alias = f"@down{len(keys)}"
        s.stage = keys.index(key) + 1
        stages.setdefault(f"@down{s.stage}", []).append(s.path)
    return stages


def format_macs(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}" if not math.isnan(n) else "-"
