"""Batch augmentations for training (pure tensor functions, seeded by a generator)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def random_shift(
    x: torch.Tensor,
    max_shift: int,
    generator: torch.Generator | None = None,
    part: tuple[int, int, int] | None = None,
) -> torch.Tensor:
    """Translate each image by an integer offset in [-max_shift, max_shift]² with zero (replicate) padding.
    ``part`` = (global batch size, rank, world): the offsets are drawn for the whole global batch and this rank
    takes rows rank, rank + world, ... (its images of the batch), so a torchrun step shifts each image as one
    process would."""
    if max_shift <= 0:
        return x
    b, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4, mode="replicate")
    if part is None:
        off = torch.randint(0, 2 * max_shift + 1, (b, 2), generator=generator)
    else:
        total, rank, world = part
        off = torch.randint(0, 2 * max_shift + 1, (total, 2), generator=generator)[rank::world]
    rows = off[:, 0, None] + torch.arange(h)[None]  # [b, h]
    cols = off[:, 1, None] + torch.arange(w)[None]  # [b, w]
    bi = torch.arange(b)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[bi, rows[:, :, None], cols[:, None, :]]  # [b, h, w, c]
    return out.permute(0, 3, 1, 2).contiguous()


def crop_flip(
    x: torch.Tensor,
    pad: int,
    fill: torch.Tensor,
    generator: torch.Generator | None = None,
    part: tuple[int, int, int] | None = None,
) -> torch.Tensor:
    """The CIFAR recipe (seed 001's pad-crop + flip; torchvision's ``RandomCrop(padding=pad)`` then
    ``RandomHorizontalFlip()``), batched: each image padded by ``pad`` with ``fill`` (per channel: black in the
    model's normalisation), cropped back at a uniform offset in [0, 2·pad]², mirrored with probability ½.
    ``part`` as in :func:`random_shift`."""
    if pad <= 0:
        return x
    b, c, h, w = x.shape
    total, rank, world = part if part is not None else (b, 0, 1)
    off = torch.randint(0, 2 * pad + 1, (total, 2), generator=generator)[rank::world]
    flip = (torch.rand(total, generator=generator) < 0.5)[rank::world]
    padded = fill.view(1, c, 1, 1).to(x).expand(b, c, h + 2 * pad, w + 2 * pad).clone()
    padded[:, :, pad : pad + h, pad : pad + w] = x
    rows = off[:, 0, None] + torch.arange(h)[None]
    cols = off[:, 1, None] + torch.arange(w)[None]
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    bi = torch.arange(b)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[bi, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()


AUGMENTS = ("none", "shift", "crop-flip", "imagenet")


def parse_augment(text: str) -> tuple[str, int]:
    """``none`` | ``shift:N`` | ``crop-flip:PAD`` | ``imagenet`` → (kind, N)."""
    from ..errors import BadInputError

    kind, _, arg = text.partition(":")
    try:
        if kind in ("shift", "crop-flip"):
            n = int(arg)
            if n < 1:
                raise ValueError
            return kind, n
        if kind in ("none", "imagenet") and not arg:
            return kind, 0
    except ValueError:
        pass
    raise BadInputError(
        f"bad --augment {text!r}: use none, shift:N (±N px), crop-flip:PAD (pad-crop + flip) or imagenet "
        "(random-resized crop + flip)"
    )


class ImagenetTrain(torch.utils.data.Dataset):
    """Training images through a random-resized crop + horizontal flip (timm's training transform for photos,
    built from the model's data config; torchvision transforms.v2 on array images), each image's draws seeded
    by (seed, epoch, position): the same on any worker, and a resumed run sees the same crops."""

    def __init__(self, ds, seed: int):
        self.ds, self.seed, self.epoch = ds, seed, 0
        self.labels, self.classes = ds.labels, ds.classes
        p = ds.preprocess
        c, h, w = p.input_size
        from torchvision.transforms import v2

        self.arrays = v2.Compose([v2.RandomResizedCrop((h, w), antialias=True), v2.RandomHorizontalFlip()])
        self._photo = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.ds)

    def _photo_transform(self):
        if self._photo is None:
            from timm.data import create_transform

            p = self.ds.preprocess
            c, h, w = p.input_size
            mean, std = (p.mean_values, p.std_values) if c == 3 else ((0.0,) * 3, (1.0,) * 3)
            self._photo = create_transform(
                input_size=(3, h, w),
                is_training=True,
                interpolation=p.geometry.interpolation,
                mean=mean,
                std=std,
                hflip=0.5,
                color_jitter=None,
                auto_augment=None,
            )
        return self._photo

    def __getstate__(self):
        return {**self.__dict__, "_photo": None}

    def __getitem__(self, i: int):
        from ..train.state import step_seed
        from .transforms import adapt_channels

        j = int(self.ds.indices[i])
        img = self.ds.raw.get_image(j)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(step_seed(self.seed, self.epoch, i, "image"))
            if isinstance(img, torch.Tensor):
                x = self.arrays(self.ds.preprocess(img))
            else:
                x = self._photo_transform()(img.convert("RGB"))
                p = self.ds.preprocess
                if p.input_size[0] != 3:
                    x = (adapt_channels(x, p.input_size[0]) - p.mean) / p.std
        return x, int(self.ds.raw.labels[j])
