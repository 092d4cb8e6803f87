"""Registrations of the built-in operators (kept apart so operator modules stay registry-free).

Each factory inherits what it can (kernel, stride, padding, channels, grids) from the layer it replaces.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .classic import MAC, RMAC, GeM, LPPool2d, SoftPool2d, SPoC
from .gsp import GSP
from .learned import LearnedLinearPool, LearnedMapPool
from .ppool import PPool2d
from .registry import CHANNELS, Param, register

ALPHA_MAX = 1000.0  # P-pooling's α: exp(α·ln x) is already max pooling to float precision at α ≈ 100
EXPONENT = Param("float", "exponent (1: average; large: max)", low=1, high=1000)
GRID = Param("int", "grid side", low=1, high=4096)


def _inherit(replaced: nn.Module | None, name: str, default: Any) -> Any:
    v = getattr(replaced, name, None) if replaced is not None else None
    return default if v is None else v


def _window(p: dict[str, Any], replaced: nn.Module | None) -> tuple[Any, Any, Any]:
    k = p.pop("kernel", _inherit(replaced, "kernel_size", 2))
    s = p.pop("stride", _inherit(replaced, "stride", k))
    pad = p.pop("padding", _inherit(replaced, "padding", 0))
    return k, s, pad


def _channels(p: dict[str, Any], replaced: nn.Module | None) -> int:
    """Channels the pool sees. Where it takes a strided conv's place, the conv runs at stride 1 before
    it (destride), so that is the conv's output channels."""
    c = (
        p.pop("channels", None)
        or _inherit(replaced, "out_channels", None)
        or _inherit(replaced, "in_channels", None)
        or _inherit(replaced, "num_features", None)
    )
    if c is None:
        raise TypeError("the number of input channels is unknown: add channels=C")
    return int(c)


@register(
    "avg",
    "average pooling: avg[:kernel=2,stride=2,padding=0,ceil_mode=false]",
    window=True,
    ceil=True,
    params={"count_include_pad": Param("bool", "zero padding counts in the average")},
)
def _avg(p: dict[str, Any], replaced: nn.Module | None) -> nn.Module:
    k, s, pad = _window(p, replaced)
    return nn.AvgPool2d(k, s, pad, count_include_pad=bool(p.pop("count_include_pad", False)), **p)


@register("max", "max pooling: max[:kernel=2,stride=2,padding=0,ceil_mode=false]", window=True, ceil=True)
def _max(p: dict[str, Any], replaced: nn.Module | None) -> nn.Module:
    k, s, pad = _window(p, replaced)
    return nn.MaxPool2d(k, s, pad, **p)


@register(
    "ppool",
    takes_channels=True,
    window=True,
    help="P-pooling: ppool[:kernel=2,stride=2,padding=0,alpha=FIXED,alpha_init=8,alpha_max=50,lr_mult=M,channels=C]",
    params={
        "alpha": Param("float", "a fixed α for every location (no side branch)", low=0, high=ALPHA_MAX, nullable=True),
        "alpha_init": Param("float", "the side branch's initial α", low=0, high=ALPHA_MAX),
        "alpha_max": Param("float", "upper clamp of the side branch's α", above=0, high=ALPHA_MAX),
        "negative": Param("choice", "how negative inputs are handled", choices=("shift", "clamp")),
        "lr_mult": Param(
            "float",
            "finetune: the side branch's lr multiplier (seed 002: 3; default --pool-lr-mult)",
            above=0,
            high=1e4,
            nullable=True,
        ),
    },
)
def _ppool(p: dict[str, Any], replaced: nn.Module | None) -> nn.Module:
    k, s, pad = _window(p, replaced)
    channels = _channels(p, replaced) if p.get("alpha") is None else int(p.pop("channels", 1))
    return PPool2d(channels, k, s, pad, **p)


@register("softpool", "SoftPool: softpool[:kernel=2,stride=2,padding=0]", window=True)
def _softpool(p: dict[str, Any], replaced: nn.Module | None) -> nn.Module:
    k, s, pad = _window(p, replaced)
    return SoftPool2d(k, s, pad)


@register(
    "gem",
    "GeM: gem[:p=3,eps=1e-6,learnable=true] (global)",
    params={
        "p": EXPONENT,
        "eps": Param("float", "clamp floor", above=0, high=1),
        "learnable": Param("bool", "p is trained"),
    },
)
def _gem(p: dict[str, Any], replaced: nn.Module | None) -> nn.Module:
    return GeM(**p)


@register(
    "lp",
    "LP pooling (Σ|x|^p)^(1/p): lp[:p=2,learnable=false] global, or with kernel=K[,stride,padding] local",
    window=True,
    params={"p": EXPONENT, "learnable": Param("bool", "p is trained")},
)
def _lp(p: dict[str, Any], replaced: nn.Module | None) -> nn.Module:
    window = {}
    if "kernel" in p or hasattr(replaced, "kernel_size"):
        k, s, pad = _window(p, replaced)
        window = {"kernel_size": k, "stride": s, "padding": pad}
    return LPPool2d(**p, **window)


@register(
    "spoc",
    "sum pooling: spoc[:centre_prior=false] (global)",
    params={"centre_prior": Param("bool", "weight locations by a centred Gaussian (SPoC)")},
)
def _spoc(p: dict[str, Any], replaced: nn.Module | None) -> nn.Module:
    return SPoC(**p)


@register("mac", "global max pooling (MAC)")
def _mac(p: dict[str, Any], replaced: nn.Module | None) -> nn.Module:
    return MAC()


@register(
    "rmac",
    "R-MAC: rmac[:levels=3] (global)",
    params={
        "levels": Param("int", "region scales", low=1, high=8),
        "eps": Param("float", "normalisation floor", above=0, high=1),
    },
)
def _rmac(p: dict[str, Any], replaced: nn.Module | None) -> nn.Module:
    return RMAC(**p)


@register(
    "gsp",
    takes_channels=True,
    help="Generalized Sum Pooling: gsp[:m=64,mu=0.3,gamma=5,dim=C,channels=C] (global)",
    params={
        "m": Param("int", "prototypes", low=1, high=1024),
        "mu": Param("float", "transported mass fraction", above=0, high=1),
        "gamma": Param("float", "entropy smoothing", above=0, high=1000),
        "dim": Param("int", "embedding width of the 1×1 projection", low=1, high=65536, nullable=True),
        "flatten": Param("bool", "return [B, C] instead of [B, C, 1, 1]"),
        "iters": Param("int", "Sinkhorn-type iterations", low=1, high=1000),
        "memory_size": Param("int", "features kept for the prototype initialisation", low=1, high=65536),
    },
)
def _gsp(p: dict[str, Any], replaced: nn.Module | None) -> nn.Module:
    channels = _channels(p, replaced)
    return GSP(
        channels,
        dim=p.pop("dim", None),
        num_prototypes=int(p.pop("m", 64)),
        mu=float(p.pop("mu", 0.3)),
        gamma=float(p.pop("gamma", 5.0)),
        flatten=bool(p.pop("flatten", False)),
        **p,
    )


@register(
    "blur",
    takes_channels=True,
    window=True,
    help="BlurPool (binomial filter, timm's buffers): blur[:channels=C,kernel=3,stride=2,padding=(kernel-1)/2]",
    params={
        # convert's --recipe after picks stride+1 taps: a ViT's stride-32 patch embedding needs 33
        "kernel": Param("size", "binomial filter taps", low=2, high=65),
        "filt_size": Param("int", "the same as kernel (timm's name)", low=2, high=65),
    },
)
def _blur(p: dict[str, Any], replaced: nn.Module | None) -> nn.Module:
    from .blur import BlurPool2d

    channels = _channels(p, replaced)
    size = p.pop("kernel", p.pop("filt_size", 3))
    stride = p.pop("stride", _inherit(replaced, "stride", 2))
    size, stride = _square(size, "kernel"), _square(stride, "stride")
    return BlurPool2d(channels, filt_size=size, stride=stride, padding=p.pop("padding", None), **p)


def _square(v: Any, what: str) -> int:
    if isinstance(v, (tuple, list)):
        if len(set(int(x) for x in v)) != 1:
            raise ValueError(f"blur takes a square {what}, got {list(v)}")
        return int(v[0])
    return int(v)


@register(
    "learned",
    "learned linear pooling: learned:FILE[,trainable=true] (a fit-pooling file), or "
    "learned:channels=C,in_h=H,in_w=W,out_h=Ho,out_w=Wo,k=2 (P from the state_dict)",
    params={
        "file": Param("file", "a fit-pooling file"),
        "trainable": Param("bool", "P is trained"),
        "channels": CHANNELS,
        **{g: GRID for g in ("in_h", "in_w", "out_h", "out_w")},
        "k": Param("int", "pooling maps per location", low=1, high=64),
    },
)
def _learned(p: dict[str, Any], replaced: nn.Module | None) -> nn.Module:
    if "file" in p:
        # the one file read in ops: through the io layer, which does not import ops
        from ..io.poolfile import read_pooling

        tensors, meta = read_pooling(p["file"])
        return LearnedLinearPool.from_tensors(tensors, meta, trainable=bool(p.get("trainable", False)))
    return LearnedLinearPool(
        int(p["channels"]),
        (int(p["in_h"]), int(p["in_w"])),
        (int(p["out_h"]), int(p["out_w"])),
        k=int(p.get("k", 2)),
        trainable=bool(p.get("trainable", False)),
    )


@register(
    "learned_map",
    "learned spatial map shared by all channels: learned_map:in_h=H,in_w=W,out_h=Ho,out_w=Wo "
    "(W from the state_dict; convert builds it for a stage's other branches from learned pooling)",
    params={**{g: GRID for g in ("in_h", "in_w", "out_h", "out_w")}, "trainable": Param("bool", "W is trained")},
)
def _learned_map(p: dict[str, Any], replaced: nn.Module | None) -> nn.Module:
    return LearnedMapPool(
        (int(p["in_h"]), int(p["in_w"])), (int(p["out_h"]), int(p["out_w"])), trainable=bool(p.get("trainable", False))
    )
