"""Dataset specs → torch Datasets.

Grammar: ``digits[:SPLIT]``, ``folder:PATH[:SPLIT]``, ``cifar10:PATH[:SPLIT]``, ``cifar100:PATH[:SPLIT]``,
``svhn:PATH[:SPLIT]``, ``tensors:FILE``. Subsets: ``classes`` ("0-4" or "1,3,7"), ``limit`` (first N after
a seeded shuffle), ``max_per_class``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from ..errors import BadInputError
from ..text import quote
from .sources import (
    RawDataset,
    load_cifar_source,
    load_digits_source,
    load_folder_source,
    load_svhn_source,
    load_tensors_source,
)
from .transforms import Preprocess

KINDS = ("digits", "folder", "cifar10", "cifar100", "svhn", "tensors")
SPLITS = ("train", "test", "val", "extra", "all")
SOURCE_SPLITS = {
    "cifar10": ("train", "test"),
    "cifar100": ("train", "test"),
    "svhn": ("train", "test", "extra"),
    "folder": ("train", "val", "test"),
}
BAD_IMAGES = ("error", "skip")


@dataclasses.dataclass(frozen=True)
class DataSpec:
    kind: str
    path: str | None
    split: str | None

    def __str__(self) -> str:
        return ":".join(p for p in (self.kind, self.path, self.split) if p)


def parse_data_spec(text: str) -> DataSpec:
    kind, _, rest = text.partition(":")
    if kind not in KINDS:
        raise BadInputError(
            f"unknown dataset {quote(text)}: use one of digits, folder:PATH, cifar10:PATH, "
            "cifar100:PATH, svhn:PATH, tensors:FILE"
        )
    split = None
    if kind == "digits":
        return DataSpec(kind, None, rest or None)
    head, sep, tail = rest.rpartition(":")
    if sep and tail in SPLITS:
        rest, split = head, tail
    if not rest:
        raise BadInputError(f"dataset '{text}' needs a path: {kind}:PATH")
    return DataSpec(kind, rest, split)


def open_raw(spec: DataSpec | str, default_split: str) -> RawDataset:
    spec = parse_data_spec(spec) if isinstance(spec, str) else spec
    split = spec.split or default_split
    if spec.kind == "digits":
        return load_digits_source(split)
    path = Path(spec.path or "")
    if not path.exists():
        head, sep, tail = (spec.path or "").rpartition(":")
        if sep and Path(head).exists() and spec.split is None:
            raise BadInputError(
                f"unknown split {quote(tail)} in {quote(str(spec))}: {spec.kind} takes "
                f"{', '.join(SOURCE_SPLITS.get(spec.kind, SPLITS))}"
            )
        raise BadInputError(f"dataset path not found: {quote(path)}; check the {spec.kind}:PATH spec")
    if spec.kind in ("cifar10", "cifar100"):
        return load_cifar_source(spec.kind, path, split)
    if spec.kind == "svhn":
        return load_svhn_source(path, split)
    if spec.kind == "folder":
        return load_folder_source(path, spec.split, default_split)
    return load_tensors_source(path)


def parse_classes(text: str | None) -> list[int] | None:
    """ "0-4" → [0..4]; "1,3,7" → [1,3,7]; ranges and lists mix ("0-2,7")."""
    if not text:
        return None
    out: list[int] = []
    try:
        for part in text.split(","):
            a, sep, b = part.strip().partition("-")
            out.extend(range(int(a), int(b) + 1) if sep else [int(a)])
    except ValueError:
        raise BadInputError(
            f"bad --classes '{text}': use ranges and lists of class indices, e.g. 0-4 or 1,3,7"
        ) from None
    return sorted(set(out))


def select_indices(
    labels: torch.Tensor,
    classes: list[int] | None = None,
    limit: int | None = None,
    max_per_class: int | None = None,
    seed: int = 0,
    shuffle: bool = False,
) -> torch.Tensor:
    """Indices after the class filter, the per-class cap (first ones per class) and ``limit``."""
    idx = torch.arange(labels.numel())
    if shuffle or limit is not None:
        idx = idx[torch.randperm(labels.numel(), generator=torch.Generator().manual_seed(seed))]
    if classes is not None:
        idx = idx[torch.isin(labels[idx], torch.tensor(classes, dtype=labels.dtype))]
    if max_per_class is not None:
        keep, seen = [], {}
        for i in idx.tolist():
            c = int(labels[i])
            if seen.get(c, 0) < max_per_class:
                seen[c] = seen.get(c, 0) + 1
                keep.append(i)
        idx = torch.tensor(keep, dtype=torch.long)
    if limit is not None:
        idx = idx[:limit]
    if not shuffle:
        idx, _ = torch.sort(idx)
    return idx


class ImageDataset(Dataset):
    """(preprocessed image, label) for the chosen indices of a :class:`RawDataset`."""

    def __init__(self, raw: RawDataset, indices: torch.Tensor, preprocess: Preprocess):
        self.raw, self.indices, self.preprocess = raw, indices, preprocess
        self.labels = raw.labels[indices]
        self.classes = raw.classes

    def __len__(self) -> int:
        return int(self.indices.numel())

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        j = int(self.indices[i])
        return self.preprocess(self.raw.get_image(j)), int(self.raw.labels[j])

    def select(
        self, classes: str | list[int] | None, limit: int | None, max_per_class: int | None, seed: int = 0
    ) -> ImageDataset:
        """The same selection as a dataset spec's ``--classes/--limit/--max-per-class`` (self when none)."""
        if classes is None and limit is None and max_per_class is None:
            return self
        cls = parse_classes(classes) if isinstance(classes, str) else classes
        keep = select_indices(self.labels, cls, limit, max_per_class, seed)
        out = ImageDataset(self.raw, self.indices[keep], self.preprocess)
        out.description, out.skipped = getattr(self, "description", ""), []  # type: ignore[attr-defined]
        if len(out) == 0:
            raise BadInputError("the dataset is empty after selection (classes/limit); widen the selection")
        return out

    def subset(self, positions: torch.Tensor) -> ImageDataset:
        """The images at ``positions`` of this dataset (same preprocessing, same class names)."""
        out = ImageDataset(self.raw, self.indices[positions], self.preprocess)
        out.description, out.skipped = getattr(self, "description", ""), []  # type: ignore[attr-defined]
        return out

    def class_counts(self) -> dict[int, int]:
        vals, counts = torch.unique(self.labels, return_counts=True)
        return {int(v): int(c) for v, c in zip(vals, counts)}


def open_dataset(
    spec: str,
    *,
    transform: Preprocess | None = None,
    input_size: tuple[int, int, int] | None = None,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    default_split: str = "test",
    classes: str | list[int] | None = None,
    limit: int | None = None,
    max_per_class: int | None = None,
    seed: int = 0,
    bad_images: str = "error",
) -> ImageDataset:
    """The selected images of dataset ``spec``, preprocessed by ``transform`` (a model's: ``bundle.transform``),
    or for ``input_size``/``mean``/``std`` with the default photo geometry.

    ``bad_images``: "error" (an unreadable image file stops the run, naming it) or "skip" (every selected
    image is decoded once up front and unreadable ones are left out; ``ds.skipped`` lists them)."""
    if bad_images not in BAD_IMAGES:
        raise BadInputError(f"--bad-images must be error or skip, not {quote(bad_images)}")
    if transform is None:
        if input_size is None or mean is None or std is None:
            raise TypeError("open_dataset needs transform= or input_size=, mean= and std=")
        transform = Preprocess(input_size, mean, std)
    input_size = transform.input_size
    raw = open_raw(spec, default_split)
    if raw.channels != input_size[0] and 1 not in (raw.channels, input_size[0]):
        raise BadInputError(
            f"{spec} has {raw.channels}-channel images but the model takes {input_size[0]} channels; "
            "give 1-channel (grey) or matching images, or a model built with --in-chans"
        )
    cls = parse_classes(classes) if isinstance(classes, str) else classes
    if limit is not None and limit < 1:
        raise BadInputError(f"--limit must be ≥ 1, got {limit}")
    if max_per_class is not None and max_per_class < 1:
        raise BadInputError(f"--max-per-class must be ≥ 1, got {max_per_class}")
    if raw.labels.numel() == 0:
        raise BadInputError(f"dataset {spec} holds no images; give a dataset with images")
    idx = select_indices(raw.labels, cls, limit, max_per_class, seed)
    skipped: list[str] = []
    if bad_images == "skip" and raw.names is not None:
        keep = []
        for i in idx.tolist():
            try:
                raw.get_image(i)
                keep.append(i)
            except BadInputError:
                skipped.append(raw.names(i))
        idx = torch.tensor(keep, dtype=torch.long)
    if idx.numel() == 0:
        raise BadInputError(
            f"dataset {spec} is empty after selection (classes={classes}, limit={limit}"
            f"{', every image unreadable' if skipped else ''}); widen the selection"
        )
    ds = ImageDataset(raw, idx, transform)
    ds.description = raw.description  # type: ignore[attr-defined]
    ds.skipped = skipped  # type: ignore[attr-defined]
    return ds


MAX_WORKERS = 256


def check_workers(workers: int) -> None:
    if not 0 <= workers <= MAX_WORKERS:
        raise BadInputError(f"--workers must be between 0 (load in process) and {MAX_WORKERS}, got {workers}")


def make_loader(
    ds: Dataset, batch_size: int, workers: int = 0, shuffle: bool = False, seed: int = 0, drop_last: bool = False
) -> DataLoader:
    if batch_size < 1:
        raise BadInputError(f"--batch-size must be ≥ 1, got {batch_size}")
    check_workers(workers)
    g = torch.Generator().manual_seed(seed)
    return DataLoader(
        ds,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=workers,
        generator=g,
        drop_last=drop_last,
        persistent_workers=False,
    )


class _ItemImages:
    """index → the image of ``dataset[index]`` (already a model input: the caller's own transform ran)."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __call__(self, i: int) -> torch.Tensor:
        return self.dataset[i][0]


class Passthrough:
    """The preprocessing of a dataset whose items are model inputs already."""

    def __init__(self, input_size: tuple[int, ...]):
        self.input_size = tuple(input_size)

    def signature(self) -> tuple:
        return ("Passthrough", self.input_size)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        return img


def wrap_dataset(dataset: Dataset, input_size: tuple[int, ...], classes: list[str] | None = None) -> ImageDataset:
    """Any map-style dataset of ``(input tensor, int label)`` as an :class:`ImageDataset` (labels read from
    ``dataset.targets`` when it has them, else from every item once)."""
    if isinstance(dataset, ImageDataset):
        return dataset
    n = len(dataset)  # type: ignore[arg-type]
    targets = getattr(dataset, "targets", None)
    labels = torch.as_tensor(list(targets) if targets is not None else [int(dataset[i][1]) for i in range(n)])
    from .sources import check_labels

    labels = check_labels(labels, None, type(dataset).__name__)
    names = (
        classes
        or [str(c) for c in getattr(dataset, "classes", [])]
        or [str(i) for i in range(int(labels.max()) + 1 if n else 0)]
    )
    raw = RawDataset(
        labels=labels,
        classes=names,
        get_image=_ItemImages(dataset),
        description=f"python:{type(dataset).__name__} ({n} images)",
        identity=f"python:{type(dataset).__module__}.{type(dataset).__qualname__}:{id(dataset)}",
        channels=int(input_size[0]),
    )
    ds = ImageDataset(raw, torch.arange(n), Passthrough(input_size))  # type: ignore[arg-type]
    ds.description = raw.description  # type: ignore[attr-defined]
    ds.skipped = []  # type: ignore[attr-defined]
    return ds


def stratified_folds(labels: torch.Tensor, holdout: float, fold: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train positions, held-out positions) of fold ``fold`` out of K = round(1 / holdout): each class's images
    in a seeded order, image j of a class in fold j mod K — stratified (every class with ≥ K images is in every
    fold, in proportion) and disjoint; the K folds partition the data (seed 001 §6.2's held-out cross-validation)."""
    if not (0 < holdout <= 0.5):
        raise BadInputError(f"--holdout must be a fraction in (0, 0.5], got {holdout}")
    k = round(1 / holdout)
    if not 0 <= fold < k:
        raise BadInputError(f"--fold must be in 0..{k - 1} for --holdout {holdout} ({k} folds), got {fold}")
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(labels.numel(), generator=g)
    which = torch.empty(labels.numel(), dtype=torch.long)
    for c in torch.unique(labels).tolist():
        members = order[labels[order] == c]
        which[members] = torch.arange(members.numel()) % k
    held = (which == fold).nonzero().flatten()
    kept = (which != fold).nonzero().flatten()
    if held.numel() == 0 or kept.numel() == 0:
        raise BadInputError(
            f"fold {fold} of {k} is empty: the selection has too few images; widen it or raise --holdout"
        )
    return kept, held
