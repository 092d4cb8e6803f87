"""A model plus everything needed to rebuild and feed it (the checkpoint manifest, in memory)."""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

from ..data.transforms import PhotoGeometry, Preprocess

CHECKPOINT_FORMAT = "poolcli.checkpoint"
CHECKPOINT_VERSION = 1


@dataclasses.dataclass
class ModelBundle:
    module: nn.Module
    base: dict[str, Any]  # {"source": "timm"|"tv"|"poolcli", "name": str, "kwargs": {...}}
    input_size: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    swaps: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    classes: list[str] | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)
    spec: str = ""  # what the user typed, for messages and reports
    geometry: PhotoGeometry = dataclasses.field(default_factory=PhotoGeometry)  # how photos are resized/cropped
    weights: str = "random"  # where the weights came from: random, pretrained:FILE, file:PATH, checkpoint:PATH
    head_reset: list[str] = dataclasses.field(default_factory=list)  # classifier modules re-initialised on load

    @property
    def transform(self) -> Preprocess:
        """The model's own preprocessing (photos: its library's eval transform; arrays: a plain resize)."""
        return Preprocess(self.input_size, self.mean, self.std, self.geometry)

    @property
    def num_classes(self) -> int | None:
        kw = self.base.get("kwargs", {})
        if "num_classes" in kw:
            return int(kw["num_classes"])
        return len(self.classes) if self.classes else None

    def manifest(self) -> dict[str, Any]:
        from .. import __version__

        return {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "poolcli_version": __version__,
            "base": self.base,
            "swaps": list(self.swaps),
            "classes": self.classes,
            "input_size": list(self.input_size),
            "mean": list(self.mean),
            "std": list(self.std),
            "preprocess": self.geometry.to_json(),
            "extra": self.extra,
        }
