"""The common corruptions of Hendrycks & Dietterich, generated on the fly in torch, batch by batch.

Source: D. Hendrycks and T. Dietterich, "Benchmarking Neural Network Robustness to Common Corruptions and
Perturbations", ICLR 2019, and its generation code in github.com/hendrycks/robustness:

* ``ImageNet-C/create_c/make_cifar_c.py`` — the CIFAR-10-C table (32 px), table ``"cifar"``;
* ``ImageNet-C/create_c/make_imagenet_c.py`` and ``ImageNet-C/imagenet_c/imagenet_c/corruptions.py`` — the
  ImageNet-C table (224 px), table ``"imagenet"`` (the two ImageNet files carry the same numbers);
* the ``imagecorruptions`` package (github.com/bethgelab/imagecorruptions, ``imagecorruptions/corruptions.py``)
  for its re-implementation of ImageMagick's motion blur without ImageMagick.

Every formula is re-implemented here for float images in [0, 1] of shape [B, C, H, W] (C = 1 or 3) and works on
the whole batch at once. All randomness of image i comes from its own ``torch.Generator`` seeded with
``seeds[i]`` (drawn on the CPU, then moved to the images' device), so an image's corruption does not depend on the
batch it is in. The published code draws from numpy's global generator instead: the distributions are the
published ones, the particular pixels of the released CIFAR-10-C / ImageNet-C files are not reproduced.

Where the published pipeline quantises to uint8 (it works on 8-bit images throughout), this module stays in float
and only documents it; the caller decides whether to round:

* every corruption's output: ``np.uint8(corruption(img))`` before ``np.save`` (CIFAR-10-C, truncating) and
  ``Image.fromarray(np.uint8(img)).save(path, quality=85, optimize=True)`` (ImageNet-C: truncation, then the whole
  ImageNet-C set is stored as quality-85 JPEG files);
* glass blur: the first Gaussian blur is cast with ``np.uint8`` (truncated) before the pixel shuffle;
* snow: the snow layer is truncated to uint8 before ImageMagick's motion blur and read back as an 8-bit PNG;
* motion blur: ImageMagick reads and writes 8-bit PNG;
* pixelate: PIL resizes the 8-bit image (each of the two BOX resizes rounds to uint8).

JPEG compression is the exception: the codec works on 8-bit pixels, so each image is rounded to uint8
(``round(255·x)``, exact for images that came from uint8) and round-tripped through PIL.

Deviations from the published code (each also noted at its function):

* Glass blur: the published "swap" ``x[h, w], x[h', w'] = x[h', w'], x[h, w]`` acts on numpy *views* of an
  H×W×3 array, so it is a copy, ``x[h, w] = x[h', w']``, with ``x[h', w']`` left as it is. That copy is what
  produced CIFAR-10-C and ImageNet-C and is what this module does, in the published order (resolved for all
  positions at once, see ``_glass_source``), for 1- and 3-channel images alike.
* Motion blur: ImageMagick's ``MotionBlurImage`` is replaced by the ``imagecorruptions`` re-implementation
  (2·radius + 1 shifted copies, edge pixels repeated, weighted by a one-sided Gaussian of the shift index).
  ``imagecorruptions`` stops adding copies once a shift reaches the image size; ImageMagick (the published code)
  keeps repeating edge pixels, and so does this module — the two agree whenever 2·radius + 1 <= the image side,
  which holds for both tables at their own image sizes.
* Zoom blur, snow and glass blur on non-square images: the published ``clipped_zoom`` and glass loop assume a
  square image; here each axis uses its own size (as ``imagecorruptions`` does). Square images are unaffected.
* Fog on images larger than the table's fractal (32 px CIFAR, 256 px ImageNet): the plasma fractal grows to the
  next power of two that covers the image (as ``imagecorruptions`` does).
* Elastic transform: cv2.warpAffine is bilinear at exact sample positions (as OpenCV 5 computes it; older OpenCV
  releases round positions to 1/32 px, below 1/64 px of difference). The table's pixel amounts (32 px or 244 px
  based) are used as published, not rescaled to the image size.
* Pixelate: an output side of int(side·factor) = 0 (only images under 4 px) becomes 1.
* Impulse noise draws one uniform per value where skimage's ``random_noise`` draws two (flip, then salt or
  pepper); the law is the same.
* One-channel images: every formula that is channel-wise is applied to the one channel; brightness on grey is
  ``x + c`` clipped (the HSV value of a grey pixel is the pixel and its saturation is 0, so the published
  RGB→HSV→RGB round trip reduces to that); snow's grey level of a grey image is the image itself (OpenCV's
  RGB→grey weights sum to 1); JPEG compresses a one-channel ('L') JPEG. Saturate needs colour.

Left out: frost (needs the published frost photographs) and spatter (OpenCV-specific uint8 image processing),
see ``LEFT_OUT``.

Where ``imagecorruptions`` 1.1 itself departs from the published ImageNet-C code (this module follows the
published code): pixelate scales back up with NEAREST instead of BOX; elastic_transform has no affine step and
other parameters; ``clipped_zoom`` keeps the top-left instead of the centre of the zoomed image (the same at
224 px for these factors, not for CIFAR snow at 32 px).
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import BadInputError

BENCHMARK: tuple[str, ...] = (
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "defocus_blur",
    "glass_blur",
    "motion_blur",
    "zoom_blur",
    "snow",
    "frost",
    "fog",
    "brightness",
    "contrast",
    "elastic_transform",
    "pixelate",
    "jpeg_compression",
)
EXTRA: tuple[str, ...] = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
LEFT_OUT: dict[str, str] = {
    "frost": "needs the published frost photographs (frost1.png … frost6.jpg), which this project does not ship",
    "spatter": (
        "severities 1-3 rely on OpenCV's uint8 Canny edges, chamfer distance transform and histogram equalisation, "
        "which have no faithful torch/scipy equivalent here"
    ),
}
CORRUPTIONS: tuple[str, ...] = tuple(n for n in BENCHMARK + EXTRA if n not in LEFT_OUT)
TABLES = ("cifar", "imagenet")
CATEGORY: dict[str, str] = {
    "gaussian_noise": "noise",
    "shot_noise": "noise",
    "impulse_noise": "noise",
    "speckle_noise": "noise",
    "defocus_blur": "blur",
    "glass_blur": "blur",
    "motion_blur": "blur",
    "zoom_blur": "blur",
    "gaussian_blur": "blur",
    "snow": "weather",
    "frost": "weather",
    "fog": "weather",
    "brightness": "weather",
    "spatter": "weather",
    "contrast": "digital",
    "elastic_transform": "digital",
    "pixelate": "digital",
    "jpeg_compression": "digital",
    "saturate": "digital",
}
SMALL_MAX = 84  # log-midpoint of 32 and 224 (sqrt(32 * 224) = 84.7): up to here the CIFAR table applies

_COLOUR = frozenset({"saturate", "spatter", "frost"})

# The published severity tables, transcribed as written (make_cifar_c.py; make_imagenet_c.py = imagenet_c).
_RAW: dict[str, dict[str, tuple]] = {
    "cifar": {
        "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),
        "shot_noise": (500, 250, 100, 75, 50),
        "impulse_noise": (0.01, 0.02, 0.03, 0.05, 0.07),
        "speckle_noise": (0.06, 0.1, 0.12, 0.16, 0.2),
        "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1),
        "glass_blur": ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)),
        "defocus_blur": ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)),
        "motion_blur": ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)),
        "zoom_blur": ((1, 1.06, 0.01), (1, 1.11, 0.01), (1, 1.16, 0.01), (1, 1.21, 0.01), (1, 1.26, 0.01)),
        "snow": (
            (0.1, 0.2, 1, 0.6, 8, 3, 0.95),
            (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
            (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
            (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
            (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8),
        ),
        "fog": ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)),
        "brightness": (0.05, 0.1, 0.15, 0.2, 0.3),
        "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),
        "elastic_transform": (
            (32 * 0, 32 * 0, 32 * 0.08),
            (32 * 0.05, 32 * 0.2, 32 * 0.07),
            (32 * 0.08, 32 * 0.06, 32 * 0.06),
            (32 * 0.1, 32 * 0.04, 32 * 0.05),
            (32 * 0.1, 32 * 0.03, 32 * 0.03),
        ),
        "pixelate": (0.95, 0.9, 0.85, 0.75, 0.65),
        "jpeg_compression": (80, 65, 58, 50, 40),
        "saturate": ((0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)),
    },
    "imagenet": {
        "gaussian_noise": (0.08, 0.12, 0.18, 0.26, 0.38),
        "shot_noise": (60, 25, 12, 5, 3),
        "impulse_noise": (0.03, 0.06, 0.09, 0.17, 0.27),
        "speckle_noise": (0.15, 0.2, 0.35, 0.45, 0.6),
        "gaussian_blur": (1, 2, 3, 4, 6),
        "glass_blur": ((0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)),
        "defocus_blur": ((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)),
        "motion_blur": ((10, 3), (15, 5), (15, 8), (15, 12), (20, 15)),
        "zoom_blur": ((1, 1.11, 0.01), (1, 1.16, 0.01), (1, 1.21, 0.02), (1, 1.26, 0.02), (1, 1.31, 0.03)),
        "snow": (
            (0.1, 0.3, 3, 0.5, 10, 4, 0.8),
            (0.2, 0.3, 2, 0.5, 12, 4, 0.7),
            (0.55, 0.3, 4, 0.9, 12, 8, 0.7),
            (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65),
            (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55),
        ),
        "fog": ((1.5, 2), (2, 2), (2.5, 1.7), (2.5, 1.5), (3, 1.4)),
        "brightness": (0.1, 0.2, 0.3, 0.4, 0.5),
        "contrast": (0.4, 0.3, 0.2, 0.1, 0.05),
        # "244 should have been 224, but ultimately nothing is incorrect" (the published comment)
        "elastic_transform": (
            (244 * 2, 244 * 0.7, 244 * 0.1),
            (244 * 2, 244 * 0.08, 244 * 0.2),
            (244 * 0.05, 244 * 0.01, 244 * 0.02),
            (244 * 0.07, 244 * 0.01, 244 * 0.02),
            (244 * 0.12, 244 * 0.01, 244 * 0.02),
        ),
        "pixelate": (0.6, 0.5, 0.4, 0.3, 0.25),
        "jpeg_compression": (25, 18, 15, 10, 7),
        "saturate": ((0.3, 0), (0.1, 0), (2, 0), (5, 0.1), (20, 0.2)),
    },
}
_FOG_MAPSIZE = {"cifar": 32, "imagenet": 256}  # plasma_fractal(mapsize=...) default of each file
_KEYS: dict[str, tuple[str, ...]] = {
    "gaussian_noise": ("sigma",),
    "shot_noise": ("photons",),
    "impulse_noise": ("amount",),
    "speckle_noise": ("sigma",),
    "gaussian_blur": ("sigma",),
    "glass_blur": ("sigma", "max_delta", "iterations"),
    "defocus_blur": ("radius", "alias_blur"),
    "motion_blur": ("radius", "sigma"),
    "zoom_blur": ("start", "stop", "step"),
    "snow": ("mean", "std", "zoom", "threshold", "blur_radius", "blur_sigma", "blend"),
    "fog": ("strength", "wibble_decay"),
    "brightness": ("delta",),
    "contrast": ("factor",),
    "elastic_transform": ("alpha", "sigma", "affine"),
    "pixelate": ("factor",),
    "jpeg_compression": ("quality",),
    "saturate": ("scale", "shift"),
}
_EXTRA_KEYS: dict[str, dict[str, Any]] = {
    "impulse_noise": {"salt_vs_pepper": 0.5},
    "gaussian_blur": {"truncate": 4.0, "mode": "nearest"},
    "motion_blur": {"angle": [-45, 45]},
    "snow": {"angle": [-135, -45]},
    "elastic_transform": {"truncate": 3.0},
}


# ----------------------------------------------------------------------------------------------- public helpers


def table_for(height: int, width: int) -> str:
    """The table for images of this size: ``"cifar"`` up to 84 px on the longer side, else ``"imagenet"``."""
    return "cifar" if max(int(height), int(width)) <= SMALL_MAX else "imagenet"


def _check_name(name: str, *, implemented: bool = True) -> None:
    if name in LEFT_OUT and implemented:
        valid = ", ".join(CORRUPTIONS)
        raise BadInputError(f"corruption {name!r} is not generated: {LEFT_OUT[name]}; use one of {valid}")
    if name not in CATEGORY:
        raise BadInputError(f"unknown corruption {name!r}; use one of {', '.join(CORRUPTIONS)}")


def _check_severity(severity: Any) -> int:
    if isinstance(severity, bool) or not isinstance(severity, (int, np.integer)) or not 0 <= int(severity) <= 5:
        raise BadInputError(f"corruption severity must be an integer 0..5, not {severity!r}")
    return int(severity)


def _check_table(table: Any) -> None:
    if table not in TABLES:
        raise BadInputError(f"unknown corruption table {table!r}; use {' or '.join(TABLES)} (or table_for(H, W))")


def parameters(name: str, severity: int, table: str) -> dict:
    """The published parameters of ``name`` at ``severity`` in ``table`` as a JSON-able dict; severity 0 → {}."""
    _check_name(name)
    severity = _check_severity(severity)
    _check_table(table)
    if severity == 0:
        return {}
    raw = _RAW[table][name][severity - 1]
    values = raw if isinstance(raw, tuple) else (raw,)
    out: dict[str, Any] = dict(zip(_KEYS[name], values))
    out.update(_EXTRA_KEYS.get(name, {}))
    if name == "zoom_blur":
        out["zooms"] = [float(z) for z in _zooms(raw)]
    if name == "fog":
        out["mapsize"] = _FOG_MAPSIZE[table]
    return out


def needs_colour(name: str) -> bool:
    """True for corruptions undefined on one-channel images (saturate; the left-out frost and spatter)."""
    _check_name(name, implemented=False)
    return name in _COLOUR


def corrupt(name: str, x: torch.Tensor, severity: int, seeds: Sequence[int] | torch.Tensor, table: str) -> torch.Tensor:
    """Corrupt a batch: ``x`` float [B, C, H, W] in [0, 1] (C = 1 or 3) → a new tensor like it, clipped to [0, 1].

    ``seeds``: B integers; all randomness of image i comes from ``torch.Generator("cpu").manual_seed(seeds[i])``.
    Severity 0 returns a copy of ``x``.
    """
    _check_name(name)
    severity = _check_severity(severity)
    _check_table(table)
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] not in (1, 3) or not x.is_floating_point():
        shape = list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise BadInputError(f"corrupt needs float images [B, C, H, W] with C = 1 or 3, not {shape}")
    if x.shape[1] == 1 and needs_colour(name):
        raise BadInputError(f"corruption {name!r} needs colour (3-channel) images; leave it out for 1-channel ones")
    seed_list = _seed_list(seeds, x.shape[0])
    if severity == 0 or x.shape[0] == 0:
        return x.clone()
    gens = [torch.Generator(device="cpu").manual_seed(s) for s in seed_list]
    raw = _RAW[table][name][severity - 1]
    xf = x.float()
    out = _IMPL[name](xf, raw, gens, table)
    if out.data_ptr() == xf.data_ptr():
        out = out.clone()
    return out.clamp_(0.0, 1.0).to(x.dtype)


def _seed_list(seeds: Any, n: int) -> list[int]:
    if isinstance(seeds, torch.Tensor):
        seeds = seeds.reshape(-1).tolist()
    try:
        out = [int(s) for s in seeds]
    except (TypeError, ValueError):
        raise BadInputError(f"corruption seeds must be {n} integers, one per image") from None
    if len(out) != n:
        raise BadInputError(f"corruption seeds: got {len(out)} for {n} images; give one integer per image")
    if any(not -(2**63) <= s < 2**64 for s in out):
        raise BadInputError("corruption seeds must lie in [-2**63, 2**64) (torch.Generator.manual_seed's range)")
    return out


# ---------------------------------------------------------------------------------------- shared building blocks


def _ext_index(n: int, lo: int, hi: int, mode: str) -> np.ndarray:
    """Source index of positions -lo … n-1+hi of a length-n axis extended by ``mode`` (periodically, any length).

    ``edge``: a a | a b c | c c (scipy 'nearest', cv2 BORDER_REPLICATE, ImageMagick's edge virtual pixels);
    ``symmetric``: b a | a b c | c b (scipy 'reflect', cv2 BORDER_REFLECT);
    ``reflect101``: c b | a b c | b a (scipy 'mirror', cv2 BORDER_REFLECT_101 = OpenCV's default, torch 'reflect').
    """
    i = np.arange(-lo, n + hi)
    if mode == "edge":
        return np.clip(i, 0, n - 1)
    if mode == "symmetric":
        m = np.mod(i, 2 * n)
        return np.where(m < n, m, 2 * n - 1 - m)
    if n == 1:
        return np.zeros_like(i)
    p = 2 * n - 2
    m = np.mod(i, p)
    return np.where(m < n, m, p - m)


@lru_cache(maxsize=512)
def _filter_matrix(n: int, weights: tuple[float, ...], mode: str) -> torch.Tensor:
    """A[i, j]: weight of input j in output i of the centred 1-D correlation with ``weights`` (float64 [n, n])."""
    w = np.asarray(weights, dtype=np.float64)
    r = len(w) // 2
    ext = _ext_index(n, r, r, mode)
    cols = ext[np.arange(n)[:, None] + np.arange(len(w))[None, :]]
    a = np.zeros((n, n))
    np.add.at(a, (np.repeat(np.arange(n), len(w)), cols.ravel()), np.tile(w, n))
    return torch.from_numpy(a)


def _separable(x: torch.Tensor, wy: tuple[float, ...], wx: tuple[float, ...], mode: str) -> torch.Tensor:
    """Correlate the last two axes of ``x`` with 1-D ``wy`` (rows) and ``wx`` (columns); border by ``mode``.

    As dense [H, H] and [W, W] matrices: exact for any kernel length (the border folds into the matrix).
    """
    h, w = x.shape[-2:]
    ay = _filter_matrix(h, wy, mode).to(x.device, x.dtype)
    ax = _filter_matrix(w, wx, mode).to(x.device, x.dtype)
    return torch.matmul(torch.matmul(ay, x), ax.T)


@lru_cache(maxsize=256)
def _gaussian_weights(sigma: float, truncate: float) -> tuple[float, ...]:
    """scipy.ndimage's Gaussian (``gaussian_filter1d``): radius int(truncate·sigma + 0.5), normalised to sum 1."""
    radius = int(truncate * float(sigma) + 0.5)
    k = np.arange(-radius, radius + 1, dtype=np.float64)
    phi = np.exp(-0.5 / (float(sigma) ** 2) * k**2)
    return tuple(phi / phi.sum())


def _gaussian(x: torch.Tensor, sigma: float, truncate: float, mode: str) -> torch.Tensor:
    """skimage.filters.gaussian = scipy.ndimage.gaussian_filter on H and W (sigma 0 on the channel axis)."""
    if sigma <= 1e-15:  # scipy skips such axes
        return x
    g = _gaussian_weights(float(sigma), float(truncate))
    return _separable(x, g, g, mode)


def _gather_hw(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """out[b, c, p] = x[b, c, index[b, p]] over the flattened H·W positions; ``index`` int64 [B, H·W]."""
    b, c, h, w = x.shape
    idx = index.to(x.device)[:, None, :].expand(b, c, index.shape[1])
    return x.reshape(b, c, h * w).gather(2, idx).reshape(b, c, h, w)


def _bilinear(x: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor, mode: str) -> torch.Tensor:
    """Bilinear samples of x [B, C, H, W] at float64 positions ys, xs [B, H, W] (pixel centres at integers).

    Neighbours outside the image come from the ``mode`` extension (see ``_ext_index``), as scipy's
    ``map_coordinates(order=1, mode='reflect')`` (``symmetric``) and cv2.remap/warpAffine with
    BORDER_REFLECT_101 (``reflect101``) take them: ``grid_sample``'s reflection padding reflects about the pixel
    borders with align_corners=False and about the pixel centres with align_corners=True. In float64, so the
    positions are exact to ~1e-13 px.
    """
    _, _, h, w = x.shape
    if mode == "symmetric":
        gx, gy, corners = (2 * xs + 1) / w - 1, (2 * ys + 1) / h - 1, False
    elif mode == "reflect101":
        gx, gy, corners = 2 * xs / max(w - 1, 1) - 1, 2 * ys / max(h - 1, 1) - 1, True
    else:
        raise ValueError(mode)
    grid = torch.stack([gx, gy], -1).to(x.device)
    out = F.grid_sample(x.double(), grid, mode="bilinear", padding_mode="reflection", align_corners=corners)
    return out.to(x.dtype)


def _draw(gens: list[torch.Generator], shape: tuple[int, ...], kind: str, dtype=torch.float32, **kw) -> torch.Tensor:
    """One draw per image from that image's generator, written into its slice of one [B, *shape] CPU tensor.

    ``kind``: ``rand`` (U[0, 1)), ``randn`` (N(0, 1)) or ``randint`` (``low``, ``high`` as in torch.randint).
    """
    out = torch.empty((len(gens), *shape), dtype=dtype)
    for i, g in enumerate(gens):
        if kind == "rand":
            torch.rand(shape, generator=g, dtype=dtype, out=out[i])
        elif kind == "randn":
            torch.randn(shape, generator=g, dtype=dtype, out=out[i])
        else:
            torch.randint(kw["low"], kw["high"], shape, generator=g, dtype=dtype, out=out[i])
    return out


def _clipped_zoom(x: torch.Tensor, zoom: float) -> torch.Tensor:
    """The published ``clipped_zoom``: centre crop of ceil(side / zoom), scipy ``zoom(order=1)``, centre trim.

    scipy's ``zoom(order=1)`` maps output pixel o to input o·(n_in - 1)/(n_out - 1) with n_out = round(n_in·zoom)
    (grid_mode=False), which is bilinear ``interpolate(align_corners=True)``; computed in float64 (float32 torch
    positions drift by up to 2e-5 at 224 px). Each axis uses its own size (the published code assumes squares).
    """
    h, w = x.shape[-2:]
    ch, cw = int(np.ceil(h / zoom)), int(np.ceil(w / zoom))
    top, left = (h - ch) // 2, (w - cw) // 2
    oh, ow = int(round(ch * zoom)), int(round(cw * zoom))
    crop = x[..., top : top + ch, left : left + cw]
    if (oh, ow) != (ch, cw):
        crop = F.interpolate(crop.double(), size=(oh, ow), mode="bilinear", align_corners=True).to(x.dtype)
    th, tw = (oh - h) // 2, (ow - w) // 2
    return crop[..., th : th + h, tw : tw + w]


def _rgb_to_hsv(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """skimage.color.rgb2hsv for [B, 3, H, W] (ties: blue over green over red, as its overwrites go)."""
    r, g, b = x.unbind(1)
    v = x.amax(1)
    delta = v - x.amin(1)
    flat = delta == 0
    safe = torch.where(flat, torch.ones_like(delta), delta)
    s = torch.where(flat, torch.zeros_like(v), delta / torch.where(v == 0, torch.ones_like(v), v))
    h = (g - b) / safe
    h = torch.where(g == v, 2.0 + (b - r) / safe, h)
    h = torch.where(b == v, 4.0 + (r - g) / safe, h)
    h = torch.remainder(h / 6.0, 1.0)
    return torch.where(flat, torch.zeros_like(h), h), s, v


def _hsv_to_rgb(h: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """skimage.color.hsv2rgb → [B, 3, H, W]."""
    h6 = h * 6.0
    hi = torch.floor(h6)
    f = h6 - hi
    p = v * (1 - s)
    q = v * (1 - f * s)
    t = v * (1 - (1 - f) * s)
    sector = torch.remainder(hi, 6)

    def pick(options: tuple[torch.Tensor, ...]) -> torch.Tensor:
        out = options[5]
        for k in range(4, -1, -1):
            out = torch.where(sector == k, options[k], out)
        return out

    return torch.stack([pick((v, q, p, p, t, v)), pick((t, v, v, q, p, p)), pick((p, p, t, v, v, q))], 1)


# --------------------------------------------------------------------------------------------------------- noise


def _gaussian_noise(x, c, gens, table):
    return x + _draw(gens, x.shape[1:], "randn").to(x.device) * c


def _shot_noise(x, c, gens, table):
    rates = x.detach().cpu() * c
    counts = torch.empty_like(rates)
    for i, g in enumerate(gens):
        counts[i] = torch.poisson(rates[i], generator=g)
    return (counts / c).to(x.device)


def _impulse_noise(x, c, gens, table):
    """skimage ``random_noise(mode='s&p', amount=c)``: each value flips w.p. c, to 1 or 0 with equal odds.

    One uniform u per value (skimage draws two): u < c/2 → 1 (salt), c/2 <= u < c → 0 (pepper); the same law.
    """
    u = _draw(gens, x.shape[1:], "rand").to(x.device)
    return torch.where(u < c, (u < c / 2).to(x.dtype), x)


def _speckle_noise(x, c, gens, table):
    return x + x * _draw(gens, x.shape[1:], "randn").to(x.device) * c


# ---------------------------------------------------------------------------------------------------------- blur


def _gaussian_blur(x, c, gens, table):
    """skimage ``gaussian(x, sigma=c, multichannel=True)``: mode 'nearest', truncate 4."""
    return _gaussian(x, c, 4.0, "edge")


def _glass_source(disp: torch.Tensor, h: int, w: int, d: int) -> torch.Tensor:
    """Where each pixel's value comes from after the published glass-blur loop, flat indices [B, H·W].

    ``disp``: int64 [B, iterations, n_h, n_w, 2] = the (dx, dy) drawn at h = H-d-a, w = W-d-b (the loop's order:
    ``for h in range(H - d, d, -1): for w in range(W - d, d, -1)``, each (dx, dy) in [-d, d)). Each step sets
    x[h, w] = x[h + dy, w + dx] (a copy, see the module docstring). A pixel's final value is the original value at
    the end of its chain of copies from pixels visited earlier; the chains are followed for all pixels at once
    by pointer doubling.
    """
    bsz, iters, nh, nw, _ = disp.shape
    n = h * w
    ident = torch.arange(n).expand(bsz, n)
    total = ident.clone()
    if nh <= 0 or nw <= 0:
        return total
    hs = torch.arange(h - d, d, -1)  # visiting order
    ws = torch.arange(w - d, d, -1)
    order = torch.full((h, w), n, dtype=torch.long)  # visit time; n = never
    order[hs[:, None], ws[None, :]] = torch.arange(nh * nw).reshape(nh, nw)
    order = order.reshape(-1)
    pos = (hs[:, None] * w + ws[None, :]).reshape(-1)  # [nh·nw] visited positions in order
    for it in range(iters):
        dx = disp[:, it, :, :, 0].reshape(bsz, -1)
        dy = disp[:, it, :, :, 1].reshape(bsz, -1)
        src = pos[None, :] + dy * w + dx  # [B, nh·nw]
        ptr = ident.clone()
        # a visited pixel whose source was visited before it continues along the chain, else it ends there
        before = order[src] < order[pos][None, :]
        res0 = ident.clone()
        res0[:, pos] = src
        ptr[:, pos] = torch.where(before, src, pos[None, :].expand(bsz, -1))
        while True:
            nxt = ptr.gather(1, ptr)
            if torch.equal(nxt, ptr):
                break
            ptr = nxt
        step = res0.gather(1, ptr)  # value of pixel p after this iteration = previous value at step[p]
        total = total.gather(1, step)
    return total


def _glass_blur(x, c, gens, table):
    sigma, d, iters = c
    _, _, h, w = x.shape
    nh, nw = max(h - 2 * d, 0), max(w - 2 * d, 0)
    disp = _draw(gens, (iters, nh, nw, 2), "randint", torch.long, low=-d, high=d)
    y = _gaussian(x, sigma, 4.0, "edge")  # published: np.uint8(... * 255) here (truncation), see module docstring
    y = _gather_hw(y, _glass_source(disp, h, w, d))
    return _gaussian(y, sigma, 4.0, "edge")


def _cv2_gaussian_kernel(ksize: int, sigma: float) -> np.ndarray:
    """cv2.getGaussianKernel(ksize, sigma) for sigma > 0 (as float32, the kernel type for float32 images)."""
    k = np.arange(ksize, dtype=np.float64) - (ksize - 1) * 0.5
    g = np.exp(-0.5 / (sigma * sigma) * k * k)
    return (g / g.sum()).astype(np.float32)


@lru_cache(maxsize=64)
def _disk(radius: float, alias_blur: float) -> np.ndarray:
    """The published ``disk(radius, alias_blur)``: a normalised aliased disk, then cv2.GaussianBlur(ksize, sigma)."""
    if radius <= 8:
        ls = np.arange(-8, 8 + 1)
        ksize = 3
    else:
        ls = np.arange(-radius, radius + 1)
        ksize = 5
    xx, yy = np.meshgrid(ls, ls)
    aliased = np.array((xx**2 + yy**2) <= radius**2, dtype=np.float32)
    aliased /= np.sum(aliased)
    g = tuple(_cv2_gaussian_kernel(ksize, alias_blur).astype(np.float64))
    a = _filter_matrix(len(ls), g, "reflect101").numpy()  # GaussianBlur's default border: BORDER_REFLECT_101
    return (a @ aliased.astype(np.float64) @ a.T).astype(np.float32)


def _defocus_blur(x, c, gens, table):
    """cv2.filter2D(channel, -1, disk(...)): correlation, anchor at the centre, BORDER_REFLECT_101.

    As OpenCV does for kernels this large, through the DFT (float64 here): the image padded by the kernel radius
    (reflect-101), circularly convolved with the flipped kernel, the padding cut off again.
    """
    kernel = torch.from_numpy(_disk(c[0], c[1])).double()
    r = kernel.shape[0] // 2
    _, _, h, w = x.shape
    iy = torch.from_numpy(_ext_index(h, r, r, "reflect101")).to(x.device)
    ix = torch.from_numpy(_ext_index(w, r, r, "reflect101")).to(x.device)
    xp = x.index_select(2, iy).index_select(3, ix).double()
    size = xp.shape[-2:]
    k = torch.zeros(size, dtype=torch.float64)
    k[: 2 * r + 1, : 2 * r + 1] = kernel.flip(0, 1)
    spectrum = torch.fft.rfft2(xp) * torch.fft.rfft2(k.to(x.device))
    return torch.fft.irfft2(spectrum, s=size)[..., 2 * r :, 2 * r :].to(x.dtype)


def _motion_taps(radius: int, sigma: float, angles: Sequence[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """imagecorruptions' ``_motion_blur`` kernel: weights [T] and shifts dy, dx [B, T] of its T = 2·radius + 1 copies.

    Copy i is the image shifted by (dy_i, dx_i) with edge pixels repeated, i.e. it samples the pixel
    (r - dy_i, c - dx_i) = (r + ceil(i·sin a - 0.5), c + ceil(i·cos a - 0.5)) — ImageMagick's MotionBlurImage
    offsets — weighted by exp(-i²/(2σ²)) normalised to sum 1. One row of shifts per angle (degrees).
    """
    width = int(radius) * 2 + 1
    k = np.exp(-(np.arange(width, dtype=np.float64) ** 2) / (2 * sigma**2)) / (np.sqrt(2 * np.pi) * sigma)
    k = k / np.sum(k)
    rad = np.deg2rad(np.asarray(angles, dtype=np.float64))
    p0, p1 = width * np.sin(rad), width * np.cos(rad)  # imagecorruptions' point = (width·sin a, width·cos a)
    hyp = np.array([math.hypot(u, v) for u, v in zip(p0.tolist(), p1.tolist())])[:, None]
    i = np.arange(width)[None, :]
    dy = -np.ceil((i * p0[:, None]) / hyp - 0.5).astype(np.int64)
    dx = -np.ceil((i * p1[:, None]) / hyp - 0.5).astype(np.int64)
    return k, dy, dx


def _motion_blur_angles(x: torch.Tensor, radius: int, sigma: float, angles: Sequence[float]) -> torch.Tensor:
    """Motion-blur image b of x [B, C, H, W] at ``angles[b]`` degrees (edge pixels repeated past the border)."""
    h, w = x.shape[-2:]
    k, dys, dxs = _motion_taps(radius, sigma, angles)
    py, px = int(np.abs(dys).max()), int(np.abs(dxs).max())
    iy = torch.from_numpy(_ext_index(h, py, py, "edge")).to(x.device)
    ix = torch.from_numpy(_ext_index(w, px, px, "edge")).to(x.device)
    xp = x.index_select(2, iy).index_select(3, ix)
    out = torch.zeros_like(x)
    weights = k.tolist()
    # add the shifted windows of each image (slices: far faster than batched gathers on CPU)
    for i, (row_y, row_x) in enumerate(zip((py - dys).tolist(), (px - dxs).tolist())):
        acc, src = out[i], xp[i]
        for kt, top, left in zip(weights, row_y, row_x):
            acc.add_(src[:, top : top + h, left : left + w], alpha=kt)
    return out


def _motion_blur(x, c, gens, table):
    """Published: Wand ``motion_blur(radius, sigma, angle=uniform(-45, 45))``; kernel as in imagecorruptions."""
    angles = (-45.0 + 90.0 * _draw(gens, (), "rand", torch.float64)).tolist()  # numpy uniform(-45, 45)
    return _motion_blur_angles(x, c[0], c[1], angles)


def _zooms(raw: tuple) -> np.ndarray:
    return np.arange(*raw)  # the published np.arange(1, stop, step), float steps and all


def _zoom_blur(x, c, gens, table):
    zooms = _zooms(c)
    xd = x.double()
    out = xd.clone()
    for z in zooms:
        out += _clipped_zoom(xd, float(z))
    return (out / (len(zooms) + 1)).to(x.dtype)


# ------------------------------------------------------------------------------------------------------- weather


def _grey(x: torch.Tensor) -> torch.Tensor:
    """cv2 COLOR_RGB2GRAY (0.299 R + 0.587 G + 0.114 B); a one-channel image is its own grey."""
    if x.shape[1] == 1:
        return x
    return 0.299 * x[:, :1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]


def _snow(x, c, gens, table):
    mean, std, zoom, threshold, radius, sigma, blend = c
    _, _, h, w = x.shape
    layer = torch.empty(len(gens), 1, h, w, dtype=torch.float64)
    angle = torch.empty(len(gens), dtype=torch.float64)
    for i, g in enumerate(gens):  # published order: the normal layer, then the angle
        torch.randn((1, h, w), generator=g, dtype=torch.float64, out=layer[i])
        torch.rand((), generator=g, dtype=torch.float64, out=angle[i])
    angles = (-135.0 + 90.0 * angle).tolist()  # uniform(-135, -45)
    layer = _clipped_zoom(mean + std * layer, zoom)
    layer = torch.where(layer < threshold, torch.zeros_like(layer), layer).clamp(0, 1)
    # published: uint8 (truncated) 'L' PNG → ImageMagick motion blur → 8-bit PNG → /255; float here
    layer = _motion_blur_angles(layer.to(x.device, x.dtype), radius, sigma, angles)
    x = blend * x + (1 - blend) * torch.maximum(x, _grey(x) * 1.5 + 0.5)
    return x + layer + layer.flip(-2, -1)  # + np.rot90(snow_layer, k=2)


def _plasma_fractal(gens: list[torch.Generator], mapsize: int, wibbledecay: float) -> torch.Tensor:
    """The published ``plasma_fractal`` (diamond-square, after FLHerne/mapgen) per image: float64 [B, m, m] in [0, 1].

    Each image draws all its uniforms at once from its generator, consumed in the published order
    (per level: squares, then the two diamond sets).
    """
    bsz = len(gens)
    counts, s = [], mapsize
    while s >= 2:
        counts.append(3 * (mapsize // s) ** 2)
        s //= 2
    u = _draw(gens, (sum(counts),), "rand", torch.float64)
    m = torch.zeros(bsz, mapsize, mapsize, dtype=torch.float64)
    step, wibble, used = mapsize, 100.0, 0
    while step >= 2:
        n, half = mapsize // step, step // 2
        # wibbledmean(a) = a / 4 + wibble · uniform(-wibble, wibble), three draws of n×n per level
        r = u[:, used : used + 3 * n * n].reshape(bsz, 3, n, n)
        noise = wibble * (-wibble + 2 * wibble * r)
        used += 3 * n * n
        corner = m[:, 0::step, 0::step]
        sq = corner + corner.roll(-1, 1)
        sq = sq + sq.roll(-1, 2)
        m[:, half::step, half::step] = sq / 4 + noise[:, 0]
        dr = m[:, half::step, half::step]
        ul = m[:, 0::step, 0::step]
        m[:, 0::step, half::step] = (dr + dr.roll(1, 1) + ul + ul.roll(-1, 2)) / 4 + noise[:, 1]
        m[:, half::step, 0::step] = (dr + dr.roll(1, 2) + ul + ul.roll(-1, 1)) / 4 + noise[:, 2]
        step //= 2
        wibble /= wibbledecay
    m = m - m.amin((1, 2), keepdim=True)
    return m / m.amax((1, 2), keepdim=True)


def _fog(x, c, gens, table):
    strength, decay = c
    _, _, h, w = x.shape
    mapsize = _FOG_MAPSIZE[table]
    while mapsize < max(h, w):
        mapsize *= 2
    plasma = _plasma_fractal(gens, mapsize, decay)[:, None, :h, :w].to(x.device, x.dtype)
    max_val = x.amax((1, 2, 3), keepdim=True)
    return (x + strength * plasma) * max_val / (max_val + strength)


def _brightness(x, c, gens, table):
    """HSV value + c (skimage rgb2hsv / hsv2rgb); on grey, x + c."""
    if x.shape[1] == 1:
        return x + c
    h, s, v = _rgb_to_hsv(x)
    return _hsv_to_rgb(h, s, (v + c).clamp(0, 1))


# ------------------------------------------------------------------------------------------------------- digital


def _contrast(x, c, gens, table):
    """(x - mean) · c + mean, the mean per channel over H and W (np.mean(x, axis=(0, 1)) in both tables)."""
    means = x.mean((2, 3), keepdim=True)
    return (x - means) * c + means


def _saturate(x, c, gens, table):
    h, s, v = _rgb_to_hsv(x)
    return _hsv_to_rgb(h, (s * c[0] + c[1]).clamp(0, 1), v)


def _affine_inverse(pert: np.ndarray, h: int, w: int) -> np.ndarray:
    """cv2.invertAffineTransform(cv2.getAffineTransform(pts1, pts1 + pert)) for the published three points.

    ``pert`` float64 [B, 3, 2]; the points are (row, col)-ordered values passed as cv2's (x, y), as published.
    """
    center = np.float32((h, w)) // 2
    square = min(h, w) // 3
    pts1 = np.float32([center + square, [center[0] + square, center[1] - square], center - square])
    pts2 = pts1[None] + pert.astype(np.float32)
    bsz = pert.shape[0]
    a = np.zeros((bsz, 6, 6))
    rhs = np.zeros((bsz, 6))
    for i in range(3):  # getAffineTransform's system: [x y 1 0 0 0]·m = u, [0 0 0 x y 1]·m = v
        a[:, 2 * i, 0:2] = pts1[i]
        a[:, 2 * i, 2] = 1
        a[:, 2 * i + 1, 3:5] = pts1[i]
        a[:, 2 * i + 1, 5] = 1
        rhs[:, 2 * i] = pts2[:, i, 0]
        rhs[:, 2 * i + 1] = pts2[:, i, 1]
    m = np.linalg.solve(a, rhs[..., None])[..., 0].reshape(bsz, 2, 3)
    det = m[:, 0, 0] * m[:, 1, 1] - m[:, 0, 1] * m[:, 1, 0]
    det = np.where(det != 0, 1.0 / np.where(det != 0, det, 1.0), 0.0)
    a11, a22 = m[:, 1, 1] * det, m[:, 0, 0] * det
    a12, a21 = -m[:, 0, 1] * det, -m[:, 1, 0] * det
    b1 = -a11 * m[:, 0, 2] - a12 * m[:, 1, 2]
    b2 = -a21 * m[:, 0, 2] - a22 * m[:, 1, 2]
    return np.stack([np.stack([a11, a12, b1], 1), np.stack([a21, a22, b2], 1)], 1)


def _warp_affine(x: torch.Tensor, inverse: np.ndarray) -> torch.Tensor:
    """cv2.warpAffine(x, M, (W, H), borderMode=BORDER_REFLECT_101) given M's inverse [B, 2, 3] (dst → src)."""
    _, _, h, w = x.shape
    inv = torch.from_numpy(inverse)
    cols = torch.arange(w, dtype=torch.float64)[None, None, :]
    rows = torch.arange(h, dtype=torch.float64)[None, :, None]
    sx = inv[:, 0, 0, None, None] * cols + inv[:, 0, 1, None, None] * rows + inv[:, 0, 2, None, None]
    sy = inv[:, 1, 0, None, None] * cols + inv[:, 1, 1, None, None] * rows + inv[:, 1, 2, None, None]
    return _bilinear(x, sy, sx, "reflect101")


def _displace(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """scipy ``map_coordinates(x, (y + dy, x + dx, z), order=1, mode='reflect')``; dy, dx float32 [B, H, W]."""
    _, _, h, w = x.shape
    rows = torch.arange(h, dtype=torch.float64, device=dy.device)[None, :, None]
    cols = torch.arange(w, dtype=torch.float64, device=dx.device)[None, None, :]
    return _bilinear(x, rows + dy.double(), cols + dx.double(), "symmetric")


def _elastic_transform(x, c, gens, table):
    """Random affine (3 points moved by U(-c2, c2)), then smoothed U(-1, 1) displacement fields · c0.

    Fields: skimage ``gaussian(U, c1, mode='reflect', truncate=3)`` (scipy 'reflect' = symmetric), cast to
    float32 as published. Draw order as published: the affine perturbation, then dx, then dy.
    """
    alpha, sigma, affine = c
    _, _, h, w = x.shape
    pert = torch.empty(len(gens), 3, 2, dtype=torch.float64)
    fields = torch.empty(len(gens), 2, h, w, dtype=torch.float64)
    for i, g in enumerate(gens):
        torch.rand((3, 2), generator=g, dtype=torch.float64, out=pert[i])
        torch.rand((2, h, w), generator=g, dtype=torch.float64, out=fields[i])
    pert = -affine + 2 * affine * pert  # uniform(-c2, c2)
    y = _warp_affine(x, _affine_inverse(pert.numpy(), h, w))
    if alpha == 0:
        return y
    fields = (-1 + 2 * fields).to(x.device, torch.float32)  # uniform(-1, 1): dx, then dy
    fields = _gaussian(fields, sigma, 3.0, "symmetric") * alpha
    return _displace(y, fields[:, 1], fields[:, 0])


@lru_cache(maxsize=64)
def _box_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """PIL's BOX resampling of a length-n_in axis to n_out (Resample.c precompute_coeffs): float64 [n_out, n_in]."""
    scale = n_in / n_out
    filterscale = max(scale, 1.0)
    support = 0.5 * filterscale
    a = np.zeros((n_out, n_in))
    for xx in range(n_out):
        center = (xx + 0.5) * scale
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), n_in)
        t = (np.arange(lo, hi) - center + 0.5) / filterscale
        k = ((t > -0.5) & (t <= 0.5)).astype(np.float64)
        if k.sum() != 0:
            k /= k.sum()
        a[xx, lo:hi] = k
    return torch.from_numpy(a)


def _pixelate(x, c, gens, table):
    """PIL resize((int(W·c), int(H·c)), BOX) then resize((W, H), BOX), as separable float matrices."""
    _, _, h, w = x.shape
    dh, dw = max(int(h * c), 1), max(int(w * c), 1)
    py = (_box_matrix(dh, h) @ _box_matrix(h, dh)).to(x.device, x.dtype)
    px = (_box_matrix(dw, w) @ _box_matrix(w, dw)).to(x.device, x.dtype)
    return torch.matmul(torch.matmul(py, x), px.T)


def _jpeg_compression(x, c, gens, table):
    """PIL ``save(output, 'JPEG', quality=c)`` and decode, per image ('L' for one channel, 'RGB' for three)."""
    u8 = (x.detach() * 255).round().clamp(0, 255).to(torch.uint8).cpu()
    out = torch.empty(u8.shape, dtype=torch.uint8)
    for i in range(u8.shape[0]):
        arr = u8[i, 0].numpy() if u8.shape[1] == 1 else u8[i].permute(1, 2, 0).numpy()
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, "JPEG", quality=int(c))
        buf.seek(0)
        back = torch.from_numpy(np.asarray(Image.open(buf)).copy())
        out[i] = back[None] if back.dim() == 2 else back.permute(2, 0, 1)
    return out.to(x.device, x.dtype) / 255.0


_IMPL: dict[str, Callable[..., torch.Tensor]] = {
    "gaussian_noise": _gaussian_noise,
    "shot_noise": _shot_noise,
    "impulse_noise": _impulse_noise,
    "speckle_noise": _speckle_noise,
    "gaussian_blur": _gaussian_blur,
    "glass_blur": _glass_blur,
    "defocus_blur": _defocus_blur,
    "motion_blur": _motion_blur,
    "zoom_blur": _zoom_blur,
    "snow": _snow,
    "fog": _fog,
    "brightness": _brightness,
    "contrast": _contrast,
    "elastic_transform": _elastic_transform,
    "pixelate": _pixelate,
    "jpeg_compression": _jpeg_compression,
    "saturate": _saturate,
}
assert set(_IMPL) == set(CORRUPTIONS)
