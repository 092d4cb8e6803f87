"""Build a model from a spec: ``timm:NAME``, ``tv:NAME``, ``poolcli:NAME`` or a poolcli checkpoint path.

Nothing is downloaded: timm and torchvision models are built with random weights and get their
weights from ``--weights FILE`` (``.safetensors``, or ``.pt/.pth`` read with ``weights_only=True``).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from pathlib import Path
from typing import Any

from torch import nn

from ..data.transforms import DEFAULT_CROP_PCT, PhotoGeometry
from ..errors import BadInputError
from ..text import quote
from .bundle import ModelBundle
from .manifest import MAX_CHANNELS, MAX_CLASSES
from .weights import head_names, load_state_dict_strict, load_with_head, read_state_dict, weights_classes
from .zoo import ZOO

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SOURCES = ("timm", "tv", "poolcli")


def parse_input_size(text: str | None) -> tuple[int, int, int] | None:
    """``3x32x32`` → (3, 32, 32)."""
    if text is None:
        return None
    parts = text.lower().replace("×", "x").split("x")
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError:
        dims = ()
    if len(dims) != 3 or min(dims) < 1:
        raise BadInputError(f"bad --input-size '{text}': give channels x height x width, e.g. 3x224x224")
    return dims  # type: ignore[return-value]


def _suggest(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=3, cutoff=0.6)
    return f" (did you mean {', '.join(close)}?)" if close else ""


def build_base(source: str, name: str, kwargs: dict[str, Any]) -> nn.Module:
    """Construct the bare architecture (random weights). Raises BadInputError for unknown names."""
    if source == "timm":
        import timm

        if not timm.is_model(name):
            raise BadInputError(
                f"unknown timm model '{name}'{_suggest(name, timm.list_models())}; see timm.list_models()"
            )
        try:
            return timm.create_model(name, pretrained=False, **kwargs)
        except RuntimeError as e:  # e.g. an unknown pretrained tag: resnet18.bogus
            first = (str(e).strip().splitlines() or ["no detail"])[0][:160]
            raise BadInputError(f"timm cannot build {quote(name)} ({first}); see timm.list_pretrained()") from None
    if source == "tv":
        import torchvision

        names = torchvision.models.list_models()
        if name not in names:
            raise BadInputError(
                f"unknown torchvision model '{name}'{_suggest(name, names)}; see torchvision.models.list_models()"
            )
        kw = dict(kwargs)
        if name in ("googlenet", "inception_v3"):
            kw.setdefault("aux_logits", False)
            kw.setdefault("init_weights", False)
        return torchvision.models.get_model(name, weights=None, **kw)
    if source == "poolcli":
        if name not in ZOO:
            raise BadInputError(
                f"unknown poolcli model '{name}'{_suggest(name, list(ZOO))}; choose one of {', '.join(ZOO)}"
            )
        return ZOO[name](**kwargs)
    raise BadInputError(f"unknown model source '{source}': use one of {', '.join(SOURCES)}")


def _defaults(
    source: str, name: str, module: nn.Module, in_chans: int, tag: str | None = None
) -> tuple[tuple[int, int, int], tuple[float, ...], tuple[float, ...], PhotoGeometry]:
    """The model's own input size, normalisation and photo geometry, from its library: timm's
    ``resolve_model_data_config``, torchvision's weights transforms (``tv:efficientnet_b3``: a 300 crop of a
    320 resize, bicubic), and for poolcli's small models a plain resize (crop fraction 1)."""
    if source == "timm":
        from timm.data import resolve_model_data_config

        cfg = resolve_model_data_config(module)
        size = tuple(cfg.get("input_size", (3, 224, 224)))
        mean, std = tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD))
        geometry = PhotoGeometry(
            style="timm",
            interpolation=str(cfg.get("interpolation") or "bicubic"),
            crop_pct=float(cfg.get("crop_pct") or DEFAULT_CROP_PCT),
            crop_mode=str(cfg.get("crop_mode") or "center"),
        )
    elif source == "tv":
        size, mean, std, geometry = _tv_defaults(name, tag)
    else:
        size = tuple(getattr(module, "default_input_size", (1, 32, 32)))
        mean, std = (0.5,) * size[0], (0.5,) * size[0]
        geometry = PhotoGeometry(style="timm", interpolation="bilinear", crop_pct=DEFAULT_CROP_PCT)
    if in_chans != len(mean):  # e.g. grey-scale input to an ImageNet model: average the statistics
        mean = (sum(mean) / len(mean),) * in_chans
        std = (sum(std) / len(std),) * in_chans
    size = (in_chans, int(size[1]), int(size[2]))
    return size, tuple(float(m) for m in mean), tuple(float(s) for s in std), geometry


def _tv_defaults(name: str, tag: str | None = None) -> tuple[tuple[int, int, int], tuple, tuple, PhotoGeometry]:
    """From the weights' transforms (``ImageClassification``: ``tag``'s, else DEFAULT's); ImageNet's
    224-of-256 for architectures without weights."""
    import torchvision

    if tag is not None:
        from .pretrained import tv_weights

        t = tv_weights(name, tag).transforms()
    else:
        try:
            t = torchvision.models.get_model_weights(name).DEFAULT.transforms()
        except (ValueError, KeyError, AttributeError, TypeError):
            t = None
    if t is None or not hasattr(t, "crop_size"):
        side = 299 if name == "inception_v3" else 224
        return (3, side, side), IMAGENET_MEAN, IMAGENET_STD, PhotoGeometry(style="tv", resize=int(side / 0.875))
    crop, resize = int(t.crop_size[0]), int(t.resize_size[0])
    geometry = PhotoGeometry(style="tv", interpolation=t.interpolation.value, crop_pct=crop / resize, resize=resize)
    return (3, crop, crop), tuple(t.mean), tuple(t.std), geometry


def _scaled_resize(g: PhotoGeometry, default: tuple[int, ...], size: tuple[int, ...]) -> PhotoGeometry:
    """A torchvision resize follows the crop when --input-size changes it (320 for 300 → 256 for 240)."""
    if g.resize is None or tuple(default[1:]) == tuple(size[1:]):
        return g
    return dataclasses.replace(g, resize=round(min(size[1:]) * g.resize / min(default[1:])))


def _native_size(source: str, name: str, module: nn.Module, default: tuple[int, ...]) -> tuple[int, ...]:
    """The input size the constructed module is made for (torchvision's ViTs: 224 whatever the weights;
    SWAG weights need 384, so the model is rebuilt for their size)."""
    if source == "tv":
        size = getattr(module, "image_size", None)
        if isinstance(size, int):
            return (default[0], size, size)
    return default


def default_geometry(source: str, name: str, module: nn.Module) -> PhotoGeometry:
    """The photo geometry of a base architecture (for checkpoints written before it was recorded)."""
    return _defaults(source, name, module, 3)[3]


def is_checkpoint_spec(spec: str) -> bool:
    return spec.split(":", 1)[0] not in SOURCES


def build_model(
    spec: str,
    *,
    weights: str | Path | None = None,
    num_classes: int | None = None,
    in_chans: int | None = None,
    input_size: str | tuple[int, int, int] | None = None,
    pretrained: bool = False,
    use_ema: bool = False,
    crop_pct: float | None = None,
    interpolation: str | None = None,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
) -> ModelBundle:
    """Build a :class:`ModelBundle` from a model spec (see module docstring).

    ``pretrained``: the cached pretrained weights (never downloaded, :mod:`poolcli.models.pretrained`);
    ``weights``: a weights file (a training checkpoint is unwrapped; ``use_ema`` takes its EMA weights). With
    ``num_classes`` other than the weights' classes the classifier head is re-initialised (and reported in
    ``bundle.head_reset``); without it, the model is built for the weights' classes. ``crop_pct``,
    ``interpolation``, ``mean``, ``std`` override the model's own preprocessing."""
    if weights is not None and pretrained:
        raise BadInputError("--weights and --pretrained both give weights; pass one")
    if is_checkpoint_spec(spec):
        bundle = _from_checkpoint(spec, weights, num_classes, in_chans, input_size, pretrained, use_ema)
    else:
        bundle = _from_library(spec, weights, num_classes, in_chans, input_size, pretrained, use_ema)
    return _override_preprocess(bundle, crop_pct, interpolation, mean, std)


def _from_checkpoint(
    spec: str, weights, num_classes, in_chans, input_size, pretrained: bool, use_ema: bool
) -> ModelBundle:
    from .checkpoint import load_checkpoint

    if num_classes is not None or in_chans is not None or pretrained:
        raise BadInputError(
            f"--num-classes/--in-chans/--pretrained apply to timm:/tv:/poolcli: specs, not to the checkpoint {spec}"
        )
    bundle = load_checkpoint(spec)
    if weights is not None:
        load_state_dict_strict(bundle.module, read_state_dict(weights, use_ema), str(weights), spec)
        bundle.weights = f"file:{weights}"
    if use_ema and weights is None:
        raise BadInputError("--use-ema picks the EMA weights of --weights FILE; give one")
    if input_size is not None:
        size = parse_input_size(input_size) if isinstance(input_size, str) else tuple(input_size)
        _check_channels(size, bundle.input_size[0], spec)
        bound = [k for k in ("img_size", "image_size", "input_size") if k in bundle.base.get("kwargs", {})]
        if bound and tuple(size[1:]) != tuple(bundle.input_size[1:]):
            h, w = bundle.input_size[1:]
            raise BadInputError(
                f"{spec} is built for {h}×{w} inputs (its position embeddings fix the size); drop --input-size, "
                f"or convert its architecture again at the size you need"
            )
        bundle.input_size = size
    return bundle


def _from_library(
    spec: str, weights, num_classes, in_chans, input_size, pretrained: bool, use_ema: bool
) -> ModelBundle:
    source, name = spec.split(":", 1)
    if not name:
        raise BadInputError(f"model spec '{spec}' names no model: write {source}:NAME")
    tag = None
    if source == "tv" and "." in name:  # tv:resnet50.IMAGENET1K_V2 names the weights
        name, tag = name.split(".", 1)
    kwargs: dict[str, Any] = {}
    if num_classes is not None:
        if not 1 <= int(num_classes) <= MAX_CLASSES:
            raise BadInputError(
                f"--num-classes must be between 1 and {MAX_CLASSES:,}, got {num_classes} "
                "(poolcli's models end in a classifier)"
            )
        kwargs["num_classes"] = int(num_classes)
    if in_chans is not None:
        if source == "tv":
            raise BadInputError("torchvision models take 3 input channels; drop --in-chans or use a timm: model")
        if not 1 <= int(in_chans) <= MAX_CHANNELS:
            raise BadInputError(f"--in-chans must be between 1 and {MAX_CHANNELS}, got {in_chans}")
        kwargs["in_chans"] = int(in_chans)
    if use_ema and weights is None and not pretrained:
        raise BadInputError("--use-ema picks the EMA weights of --weights FILE (or --pretrained); give one")
    if pretrained and source == "poolcli":
        raise BadInputError("poolcli: models have no pretrained weights; pass --weights FILE or drop --pretrained")
    state = read_state_dict(weights, use_ema) if weights is not None else None
    module = build_base(source, name, kwargs)
    if state is not None and num_classes is None:
        # weights for other classes than the architecture's default, and no --num-classes: build for theirs
        theirs = weights_classes(state, module, _infer_num_classes(module))
        if theirs is not None:
            kwargs["num_classes"] = theirs
            module = build_base(source, name, kwargs)
    size_default, mean, std, geometry = _defaults(
        source, name, module, in_chans or _first_conv_channels(module, source), tag
    )
    native = _native_size(source, name, module, size_default)
    size = (
        parse_input_size(input_size)
        if isinstance(input_size, str)
        else (tuple(input_size) if input_size else size_default)
    )
    _check_channels(size, size_default[0], spec)
    if tuple(size[1:]) != tuple(native[1:]):
        module = _build_for_size(source, name, kwargs, module, size, native)
    reset: list[str] = []
    kind, source_file = "random", None
    if pretrained and source == "timm":
        from .pretrained import timm_pretrained

        module, path = timm_pretrained(name, kwargs, use_ema)
        default = getattr(module, "pretrained_cfg", {}).get("num_classes")
        if num_classes is not None and default not in (None, num_classes):
            reset = head_names(module, num_classes)
        kind, source_file = "pretrained", path
    elif pretrained and source == "tv":
        from .pretrained import tv_pretrained

        reset, path = tv_pretrained(name, module, num_classes, tag, use_ema)
        kind, source_file = "pretrained", path
    elif state is not None:
        reset = load_with_head(module, state, str(weights), spec, num_classes)
        kind, source_file = "file", str(weights)
    bundle = ModelBundle(
        module=module,
        base={"source": source, "name": name, "kwargs": kwargs},
        input_size=size,
        mean=mean,
        std=std,
        spec=spec,
        geometry=_scaled_resize(geometry, size_default, size),
        weights=(f"{kind}:{source_file}" if source_file else kind) + (" (ema)" if use_ema else ""),
    )
    bundle.head_reset = sorted({k.rsplit(".", 1)[0] for k in reset})
    if kind == "pretrained" and not reset:
        bundle.classes = _pretrained_classes(module, bundle.num_classes or _infer_num_classes(module))
    # recorded in checkpoints made from it: the file's name (a full path would differ between machines)
    bundle.extra["origin"] = {
        "weights": kind,
        **({"file": Path(source_file).name} if source_file else {}),
        **({"ema": True} if use_ema else {}),
        **({"head_reset": bundle.head_reset} if reset else {}),
    }
    if bundle.num_classes is None:
        bundle.base["kwargs"]["num_classes"] = _infer_num_classes(module)
    return bundle


def _pretrained_classes(module: nn.Module, outputs: int) -> list[str] | None:
    """ImageNet class names (WordNet synsets, the folder names of an ImageNet ImageFolder) for pretrained
    ImageNet-1k/22k heads, so that evaluate can compare them with a dataset's; None for other heads."""
    try:
        from timm.data import ImageNetInfo, infer_imagenet_subset

        subset = infer_imagenet_subset(module) or ("imagenet-1k" if outputs == 1000 else None)
        names = ImageNetInfo(subset).label_names() if subset else None
    except (ImportError, ValueError, KeyError, AttributeError):
        return None
    return list(names) if names is not None and len(names) == outputs else None


def _override_preprocess(bundle: ModelBundle, crop_pct, interpolation, mean, std) -> ModelBundle:
    from ..data.transforms import INTERPOLATIONS

    if crop_pct is not None and not (math.isfinite(crop_pct) and 0.05 <= crop_pct <= 2):
        raise BadInputError(f"--crop-pct must be a fraction from 0.05 to 2 (e.g. 0.875), got {crop_pct}")
    if interpolation is not None and interpolation not in INTERPOLATIONS:
        raise BadInputError(f"--interpolation must be one of {', '.join(INTERPOLATIONS)}, got {quote(interpolation)}")
    bundle.geometry = bundle.geometry.with_overrides(crop_pct, interpolation)
    c = bundle.input_size[0]
    for option, values in (("--mean", mean), ("--std", std)):
        if values is None:
            continue
        values = tuple(float(v) for v in values)
        if len(values) == 1:
            values = values * c
        if len(values) != c or not all(math.isfinite(v) for v in values):
            raise BadInputError(f"{option} needs {c} finite values (one per input channel) or one, got {values}")
        if option == "--std" and min(values) <= 0:
            raise BadInputError(f"--std values must be > 0, got {values}")
        if option == "--mean":
            bundle.mean = values
        else:
            bundle.std = values
    return bundle


_TV_SIZE_ARG = {"maxvit_t": "input_size"}  # torchvision models built for one input size, and the argument that sets it


def _build_for_size(
    source: str,
    name: str,
    kwargs: dict[str, Any],
    module: nn.Module,
    size: tuple[int, int, int],
    default: tuple[int, int, int],
) -> nn.Module:
    """Rebuild models whose position embeddings / attention biases are made for one input size (timm's ViT,
    DeiT, Swin, LeViT, CoAtNet, MaxViT ...; torchvision's ViT and MaxViT) for the size asked; ``kwargs`` records
    the argument so that a checkpoint rebuilds the same model. CNNs, which take any size, are left as they are."""
    h, w = int(size[1]), int(size[2])
    if source == "timm":
        arg, value = "img_size", [h, w]
    elif source == "tv" and name.startswith("vit_"):
        if h != w:
            raise BadInputError(f"tv:{name} takes square inputs only; pass --input-size 3x{h}x{h}")
        arg, value = "image_size", h
    elif source == "tv" and name in _TV_SIZE_ARG:
        arg, value = _TV_SIZE_ARG[name], [h, w]
    else:
        return module
    try:
        rebuilt = build_base(source, name, {**kwargs, arg: value})
    except TypeError as e:
        if arg in str(e):  # the model takes any input size
            return module
        raise
    except (AssertionError, ValueError, RuntimeError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise BadInputError(
            f"{source}:{name} cannot be built for a {h}×{w} input ({first}); pass an --input-size it "
            f"supports (its default is {default[1]}×{default[2]})"
        ) from None
    kwargs[arg] = value
    return rebuilt


def _check_channels(size: tuple[int, ...], channels: int, spec: str) -> None:
    if int(size[0]) != int(channels):
        fix = f"{channels}x{size[1]}x{size[2]}"
        raise BadInputError(
            f"--input-size {size[0]}x{size[1]}x{size[2]} has {size[0]} channels but {spec} takes {channels}; "
            f"give --input-size {fix}" + ("" if is_checkpoint_spec(spec) else " (or build it with --in-chans)")
        )


def _first_conv_channels(module: nn.Module, source: str) -> int:
    if source == "poolcli":
        return int(getattr(module, "default_input_size", (1,))[0])
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            return int(m.in_channels)
    return 3


def _infer_num_classes(module: nn.Module) -> int:
    n = getattr(module, "num_classes", None)
    if isinstance(n, int):
        return n
    last = [m for m in module.modules() if isinstance(m, nn.Linear)]
    return int(last[-1].out_features) if last else 0
