"""The checkpoint manifest's schema: every field typed and bounded before anything is built from it.

A manifest comes from whoever made the file. Only known constructor arguments reach timm/torchvision
(``checkpoint_path``, ``pretrained_cfg_overlay`` ... never do), sizes are bounded (a 1e6-wide model would try to
allocate terabytes), operators are rebuilt from declared, range-checked parameters and never read other files.
"""

from __future__ import annotations

from typing import Any

from ..data.transforms import CROP_MODES, INTERPOLATIONS, STYLES
from ..errors import BadInputError
from ..io.schema import NAME, Schema
from ..ops.registry import validate_params
from .bundle import CHECKPOINT_FORMAT, CHECKPOINT_VERSION
from .surgery import MODES

SOURCES = ("timm", "tv", "poolcli")
MAX_CLASSES = 1_000_000
MAX_SIDE = 8192
MAX_CHANNELS = 64
GRID_KINDS = ("floor", "ceil", "same")
STORAGE_DTYPES = ("float16", "bfloat16", "float32", "float64")

# constructor arguments poolcli itself records (spec.build_model, spec._build_for_size), and their checks
_KWARGS = {
    "num_classes": lambda s, v, f: s.integer(v, f, 0, MAX_CLASSES),
    "in_chans": lambda s, v, f: s.integer(v, f, 1, MAX_CHANNELS),
    "img_size": lambda s, v, f: s.size(v, f, 1, MAX_SIDE),
    "image_size": lambda s, v, f: s.integer(v, f, 1, MAX_SIDE),
    "input_size": lambda s, v, f: s.size(v, f, 1, MAX_SIDE),
    "aux_logits": lambda s, v, f: s.flag(v, f),
    "init_weights": lambda s, v, f: s.flag(v, f),
}
_ZOO_KWARGS = {  # poolcli's own small models (models/zoo.py)
    "width": lambda s, v, f: s.integer(v, f, 1, 4096),
    "widths": lambda s, v, f: [s.integer(x, f"{f}[{i}]", 1, 4096) for i, x in enumerate(s.seq(v, f, most=16))],
}
_SWAP_KEYS = {"site", "op", "params", "mode", "recipe", "flatten", "nhwc", "global", "pad", "source"}
_TOP_KEYS = {
    "format",
    "version",
    "poolcli_version",
    "base",
    "swaps",
    "classes",
    "preprocess",
    "input_size",
    "mean",
    "std",
    "extra",
    "module_versions",
    "storage_dtype",
}


def validate_manifest(m: Any, what: str) -> dict[str, Any]:
    """Check a checkpoint manifest (``what`` names the file in messages); returns it unchanged when valid."""
    s = Schema(what, "the file is corrupt or was not made by poolcli: re-create it with 'poolcli convert'")
    s.mapping(m, "(top level)")
    s.only(m, "(top level)", _TOP_KEYS)
    s.integer(m.get("version"), "version", 1, CHECKPOINT_VERSION)
    if m.get("format") != CHECKPOINT_FORMAT:
        raise s.fail("format", CHECKPOINT_FORMAT, m.get("format"))
    base = s.mapping(m.get("base"), "base")
    s.only(base, "base", {"source", "name", "kwargs"})
    source = s.text(base.get("source"), "base.source", choices=SOURCES)
    s.text(base.get("name"), "base.name", pattern=NAME)
    kwargs = s.mapping(base.get("kwargs", {}), "base.kwargs")
    allowed = {**_KWARGS, **(_ZOO_KWARGS if source == "poolcli" else {})}
    s.only(kwargs, "base.kwargs", allowed)
    for key, value in kwargs.items():
        allowed[key](s, value, f"base.kwargs.{key}")
    size = s.ints(m.get("input_size"), "input_size", 3, 1, MAX_SIDE)
    s.integer(size[0], "input_size[0] (channels)", 1, MAX_CHANNELS)
    for key in ("mean", "std"):
        s.seq(m.get(key), key, size[0])
        for i, v in enumerate(m[key]):
            s.number(v, f"{key}[{i}]", positive=key == "std")
    if m.get("preprocess") is not None:
        _check_preprocess(s, m["preprocess"])
    if m.get("classes") is not None:
        names = s.texts(m["classes"], "classes", most=MAX_CLASSES)
        if "num_classes" in kwargs and len(names) != kwargs["num_classes"]:
            raise s.fail(
                "classes", f"a list of base.kwargs.num_classes = {kwargs['num_classes']} names", f"{len(names)} names"
            )
    if "extra" in m:
        s.mapping(m["extra"], "extra")
    if m.get("module_versions") is not None:
        for k, v in s.mapping(m["module_versions"], "module_versions").items():
            if len(k) > 1000:
                raise s.fail("module_versions", "keyed by module paths of at most 1000 characters", show=False)
            s.integer(v, f"module_versions[{k[:60]}]", 0, 1000)
    if m.get("storage_dtype") is not None:
        s.text(m["storage_dtype"], "storage_dtype", choices=STORAGE_DTYPES)
    for i, rec in enumerate(s.seq(m.get("swaps", []), "swaps", most=10000)):
        _check_swap(s, rec, f"swaps[{i}]")
    return m


def _check_preprocess(s: Schema, v: Any) -> None:
    g = s.mapping(v, "preprocess")
    s.only(g, "preprocess", {"style", "interpolation", "crop_pct", "resize", "crop_mode"})
    s.text(g.get("style"), "preprocess.style", choices=STYLES)
    s.text(g.get("interpolation"), "preprocess.interpolation", choices=INTERPOLATIONS)
    s.text(g.get("crop_mode"), "preprocess.crop_mode", choices=CROP_MODES)
    crop = s.number(g.get("crop_pct"), "preprocess.crop_pct", positive=True)
    if not 0.05 <= crop <= 2:
        raise s.fail("preprocess.crop_pct", "a crop fraction from 0.05 to 2", crop)
    if g.get("resize") is not None:
        s.integer(g["resize"], "preprocess.resize", 1, MAX_SIDE)


def _check_swap(s: Schema, rec: Any, field: str) -> None:
    s.mapping(rec, field)
    s.only(rec, field, _SWAP_KEYS)
    s.text(rec.get("site"), f"{field}.site", most=1000)
    mode = s.text(rec.get("mode", "replace"), f"{field}.mode", choices=MODES)
    for key in ("flatten", "nhwc", "global"):
        if key in rec:
            s.flag(rec[key], f"{field}.{key}")
    for key in ("recipe", "source"):
        if rec.get(key) is not None:
            s.text(rec[key], f"{field}.{key}", most=1000)
    if mode in ("stride1", "identity"):
        return
    op = s.text(rec.get("op"), f"{field}.op", most=100)
    try:
        validate_params(op, s.mapping(rec.get("params", {}), f"{field}.params"), allow_files=False)
    except BadInputError as e:
        raise BadInputError(f"{s.what}: manifest field {field}: {e}; {s.fix}") from None
    if rec.get("pad"):
        pad = s.mapping(rec["pad"], f"{field}.pad")
        s.only(pad, f"{field}.pad", {"kind", "kernel", "stride", "padding"})
        s.text(pad.get("kind"), f"{field}.pad.kind", choices=GRID_KINDS)
        for key, low in (("kernel", 1), ("stride", 1), ("padding", 0)):
            s.ints(pad.get(key), f"{field}.pad.{key}", 2, low, 64)
        params = rec.get("params", {})
        for key in ("kernel", "stride"):
            if key not in params:
                raise s.fail(f"{field}.params.{key}", "present with a run-time pad", show=False)
