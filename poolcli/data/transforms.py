"""Preprocessing: the model's own evaluation transform for photos, a plain resize for small-image arrays.

Photos (decoded files: ``folder:`` datasets, PIL images) go through the library transform the model was
trained and evaluated with, built by that library: timm's ``create_transform`` (resize the shorter side to
``size / crop_pct`` with the model's interpolation, centre crop, normalise; timm's ``resolve_model_data_config``
gives the numbers) or torchvision's weights transform (``ImageClassification``: resize to ``resize_size``,
centre crop ``crop_size``, normalise). The resize runs on the 8-bit image, so a 4000×3000 JPEG is never
converted to float at full size.

Small-image arrays (digits, CIFAR, SVHN, ``tensors:``) keep the simple path: the whole image resized to the
input size (bilinear, antialiased when shrinking) and normalised; cropping a 32×32 image would lose content.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
import torch.nn.functional as F

INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "lanczos", "box", "hamming")
STYLES = ("timm", "tv")
CROP_MODES = ("center", "squash", "border")
DEFAULT_CROP_PCT = 0.875  # timm's and torchvision's ImageNet default (224 from 256)


def to_float(img: torch.Tensor) -> torch.Tensor:
    """uint8 [0,255] → float [0,1]; float images are taken as already in [0,1]."""
    if img.dtype == torch.uint8:
        return img.float().div_(255.0)
    return img.float()


def adapt_channels(img: torch.Tensor, channels: int) -> torch.Tensor:
    """Grey→RGB by repetition, RGB→grey by the channel mean; [.., C, H, W]."""
    c = img.shape[-3]
    if c == channels:
        return img
    if c == 1:
        return img.expand(*img.shape[:-3], channels, *img.shape[-2:]).contiguous()
    if channels == 1:
        return img.mean(dim=-3, keepdim=True)
    raise ValueError(f"cannot map {c}-channel images to {channels} channels")


@dataclasses.dataclass(frozen=True)
class PhotoGeometry:
    """How a photo becomes an input-sized image: whose transform (``style``), the resize interpolation, the
    crop fraction (``crop_pct``: the crop is that share of the resized image), an explicit shorter-side resize
    (torchvision's ``resize_size``; None: ``floor(size / crop_pct)``) and timm's ``crop_mode``."""

    style: str = "timm"
    interpolation: str = "bilinear"
    crop_pct: float = DEFAULT_CROP_PCT
    resize: int | None = None
    crop_mode: str = "center"

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any] | None) -> PhotoGeometry:
        return cls(**(d or {}))

    def with_overrides(self, crop_pct: float | None = None, interpolation: str | None = None) -> PhotoGeometry:
        """``--crop-pct`` drops an explicit resize (the resize follows from the new fraction)."""
        out = self
        if crop_pct is not None:
            out = dataclasses.replace(out, crop_pct=float(crop_pct), resize=None)
        if interpolation is not None:
            out = dataclasses.replace(out, interpolation=interpolation)
        return out

    def resize_for(self, size: tuple[int, int]) -> int:
        return int(self.resize) if self.resize else math.floor(min(size) / self.crop_pct)


class Preprocess:
    """Callable image → normalised [C, H, W] float tensor. Picklable (DataLoader workers under spawn)."""

    def __init__(
        self,
        input_size: tuple[int, int, int],
        mean: tuple[float, ...],
        std: tuple[float, ...],
        geometry: PhotoGeometry | None = None,
    ):
        self.input_size = tuple(int(v) for v in input_size)
        c = self.input_size[0]
        self.mean_values = tuple(float(m) for m in mean)
        self.std_values = tuple(float(s) for s in std)
        self.mean = torch.tensor(self.mean_values, dtype=torch.float32).view(c, 1, 1)
        self.std = torch.tensor(self.std_values, dtype=torch.float32).view(c, 1, 1)
        self.geometry = geometry or PhotoGeometry()
        self._photo: Any = None  # the library transform, built on first use (and in each worker)

    def signature(self) -> tuple:
        """What decides the output (keys resumable jobs)."""
        return (
            type(self).__name__,
            self.input_size,
            list(self.mean_values),
            list(self.std_values),
            sorted(self.geometry.to_json().items()),
        )

    def describe(self) -> dict[str, Any]:
        """For reports: what was used."""
        return {
            "input_size": list(self.input_size),
            "mean": list(self.mean_values),
            "std": list(self.std_values),
            **self.geometry.to_json(),
            "resize_to": self.geometry.resize_for(self.input_size[1:]),
            "arrays": "whole image resized (bilinear) to the input size",
        }

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_photo": None}

    def __call__(self, img: Any) -> torch.Tensor:
        if not isinstance(img, torch.Tensor):
            return self.photo(img)
        return self.from_pixels(to_float(img).unsqueeze(0)).squeeze(0)

    def from_pixels(self, x: torch.Tensor) -> torch.Tensor:
        """Float pixels in [0, 1], [B, C, H, W] on any device → model inputs: channels adapted, the whole image
        resized to the input size (bilinear, antialiased when shrinking), normalised (the array path)."""
        x = adapt_channels(x, self.input_size[0])
        h, w = self.input_size[1:]
        if tuple(x.shape[-2:]) != (h, w):
            shrink = x.shape[-2] > h or x.shape[-1] > w
            x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=shrink)
        return (x - self.mean.to(x.device)) / self.std.to(x.device)

    def photo(self, img: Any) -> torch.Tensor:
        """A PIL image through the library transform; exactly the library's output for 3-channel models."""
        if self._photo is None:
            self._photo = self._library_transform()
        x = self._photo(img.convert("RGB"))
        if self.input_size[0] == 3:
            return x
        return (adapt_channels(x, self.input_size[0]) - self.mean) / self.std

    def _library_transform(self) -> Any:
        g, (c, h, w) = self.geometry, self.input_size
        # the library normalises when the model takes RGB; otherwise we adapt the channels, then normalise
        mean, std = (self.mean_values, self.std_values) if c == 3 else ((0.0,) * 3, (1.0,) * 3)
        if g.style == "tv":
            from torchvision.transforms import InterpolationMode, v2

            interp = InterpolationMode(g.interpolation)
            if h == w:
                from torchvision.transforms._presets import ImageClassification

                return ImageClassification(
                    crop_size=h, resize_size=g.resize_for((h, w)), mean=mean, std=std, interpolation=interp
                )
            return v2.Compose(
                [
                    v2.Resize(g.resize_for((h, w)), interpolation=interp, antialias=True),
                    v2.CenterCrop((h, w)),
                    v2.PILToTensor(),
                    v2.ToDtype(torch.float32, scale=True),
                    v2.Normalize(mean, std),
                ]
            )
        from timm.data import create_transform

        return create_transform(
            input_size=(3, h, w),
            interpolation=g.interpolation,
            mean=mean,
            std=std,
            crop_pct=g.crop_pct if g.resize is None else min(h, w) / g.resize,
            crop_mode=g.crop_mode,
            is_training=False,
        )
