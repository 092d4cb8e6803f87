"""Readers for each on-disk dataset format. Each returns a :class:`RawDataset`.

Nothing is downloaded and nothing is unpickled with code execution: CIFAR's pickled batches are
read with an unpickler that only admits the few numpy/builtin names the format needs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..errors import BadInputError
from ..io.schema import Schema
from ..text import first_sentence, quote


@dataclasses.dataclass
class RawDataset:
    """Labels known up front (needed for per-class caps and scatter weights); images on demand."""

    labels: torch.Tensor  # int64 [N]
    classes: list[str]
    get_image: Callable[[int], Any]  # index -> uint8/float [C,H,W] tensor (arrays) or an RGB PIL image (photos)
    description: str
    files: tuple[str, ...] = ()  # files it was read from (their size and mtime key resumable jobs)
    identity: str = ""  # more of what makes it this dataset (e.g. a digest of an image folder's file list)
    channels: int = 3  # channels of its images
    names: Callable[[int], str] | None = None  # index -> file name (for messages), where images are files

    def __len__(self) -> int:
        return int(self.labels.numel())


def check_labels(labels: torch.Tensor, classes: list[str] | None, where: str) -> torch.Tensor:
    """Class indices: an integer tensor of values in [0, number of classes)."""
    if labels.dtype == torch.bool or labels.is_floating_point() or labels.is_complex():
        raise BadInputError(
            f"{where}: labels are {str(labels.dtype).replace('torch.', '')}, not integers; store "
            "class indices as an integer tensor (int64)"
        )
    labels = labels.long()
    if labels.numel() and int(labels.min()) < 0:
        raise BadInputError(f"{where}: label {int(labels.min())} is negative; labels are class indices 0..Q-1")
    if classes is not None and labels.numel() and int(labels.max()) >= len(classes):
        raise BadInputError(
            f"{where}: label {int(labels.max())} has no class name ({len(classes)} classes are named); "
            "fix the labels or the class list"
        )
    return labels


def check_images(images: torch.Tensor, where: str) -> torch.Tensor:
    """[N, C, H, W] images: uint8 (0-255), other integers within 0-255 (taken as 8-bit), or finite floats in
    [0, 1]. (Whether C suits the model is checked where both are known, ``specs.open_dataset``.)"""
    if images.dim() != 4 or min(images.shape[1:]) < 1:
        raise BadInputError(f"{where}: images have shape {list(images.shape)}; expected [N, C, H, W]")
    if images.dtype == torch.uint8:
        return images
    if images.dtype == torch.bool or images.is_complex():
        raise BadInputError(f"{where}: images are {images.dtype}; store uint8 (0-255) or float (0-1)")
    if not images.is_floating_point():
        lo, hi = int(images.min()), int(images.max())
        if lo < 0 or hi > 255:
            raise BadInputError(f"{where}: integer images range {lo}..{hi}; store 8-bit values 0-255 (uint8)")
        return images.to(torch.uint8)
    if not bool(torch.isfinite(images).all()):
        raise BadInputError(f"{where}: images hold NaN or inf values; fix or drop those images")
    lo, hi = float(images.min()), float(images.max())
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise BadInputError(
            f"{where}: float images range {lo:.4g}..{hi:.4g}; store values in [0, 1] (divide 8-bit "
            "values by 255) or uint8"
        )
    return images


class TensorImages:
    """index → image of an in-memory [N, C, H, W] tensor (a class, not a lambda: datasets must pickle for
    DataLoader workers started with spawn/forkserver)."""

    def __init__(self, images: torch.Tensor):
        self.images = images

    def __call__(self, i: int) -> torch.Tensor:
        return self.images[i]


def _tensor_source(
    images: torch.Tensor, labels: torch.Tensor, classes: list[str], description: str, files: tuple[str, ...] = ()
) -> RawDataset:
    where = description.split(" (")[0]
    images = check_images(images, where)
    labels = check_labels(labels, classes, where)
    if images.shape[0] != labels.shape[0]:
        raise BadInputError(f"{where}: {images.shape[0]} images but {labels.shape[0]} labels; give one label per image")
    return RawDataset(
        labels=labels,
        classes=classes,
        get_image=TensorImages(images),
        description=description,
        files=files,
        channels=int(images.shape[1]),
    )


# ---------------------------------------------------------------- digits (scikit-learn, offline)
DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0


def digits_split_indices() -> dict[str, np.ndarray]:
    """The fixed stratified 80/20 split of scikit-learn's 1797 digits (1437 train / 360 test)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    y = load_digits().target
    idx = np.arange(len(y))
    train, test = train_test_split(idx, test_size=DIGITS_TEST_FRACTION, random_state=DIGITS_SPLIT_SEED, stratify=y)
    return {"train": np.sort(train), "test": np.sort(test), "all": idx}


def load_digits_source(split: str) -> RawDataset:
    from sklearn.datasets import load_digits

    splits = digits_split_indices()
    if split not in splits:
        raise BadInputError(f"digits has splits {', '.join(splits)}, not '{split}'")
    d = load_digits()
    idx = splits[split]
    images = torch.from_numpy(d.images[idx].astype(np.float32) / 16.0).unsqueeze(1)  # [N,1,8,8] in [0,1]
    labels = torch.from_numpy(d.target[idx].astype(np.int64))
    return _tensor_source(
        images, labels, [str(i) for i in range(10)], f"digits:{split} (scikit-learn, {len(idx)} images)"
    )


# ---------------------------------------------------------------- CIFAR-10/100 (python pickles)
class _RestrictedUnpickler(pickle.Unpickler):
    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("builtins", "bytes"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed")


def safe_unpickle(path: Path) -> Any:
    try:
        return _RestrictedUnpickler(io.BytesIO(path.read_bytes()), encoding="latin1").load()
    except pickle.UnpicklingError as e:
        raise BadInputError(f"refusing to load {path}: {e}; it is not a plain CIFAR batch file") from None
    except (EOFError, ValueError, OSError) as e:
        raise BadInputError(f"{path} is truncated or corrupt ({e}); re-extract the dataset archive") from None


_CIFAR = {
    "cifar10": (
        "cifar-10-batches-py",
        [f"data_batch_{i}" for i in range(1, 6)],
        ["test_batch"],
        "batches.meta",
        "label_names",
        "labels",
    ),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "meta", "fine_label_names", "fine_labels"),
}


def load_cifar_source(kind: str, root: Path, split: str) -> RawDataset:
    folder, train_files, test_files, meta_file, names_key, labels_key = _CIFAR[kind]
    base = root / folder if (root / folder).is_dir() else root
    if split not in ("train", "test"):
        raise BadInputError(f"{kind} has splits train, test, not '{split}'")
    files = train_files if split == "train" else test_files
    missing = [f for f in files + [meta_file] if not (base / f).is_file()]
    if missing:
        raise BadInputError(
            f"{kind} files not found under {root}: {', '.join(missing)}; point {kind}:PATH at the "
            f"folder holding '{folder}' (torchvision's layout; nothing is downloaded)"
        )
    datas, labels = [], []
    for f in files:
        entry = safe_unpickle(base / f)
        try:
            data = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            lab = [int(v) for v in entry[labels_key]]
            if len(lab) != len(data):
                raise ValueError("labels and images differ in number")
        except (TypeError, KeyError, ValueError, IndexError, OverflowError) as e:
            raise BadInputError(
                f"{base / f} is not a well-formed {kind} batch ({first_sentence(e, 100)}); "
                "re-extract the dataset archive"
            ) from None
        datas.append(data)
        labels.extend(lab)
    try:
        classes = [str(c) for c in safe_unpickle(base / meta_file)[names_key]]
    except (TypeError, KeyError, IndexError) as e:
        raise BadInputError(
            f"{base / meta_file} is not a well-formed {kind} meta file ({first_sentence(e, 100)}); "
            "re-extract the dataset archive"
        ) from None
    images = torch.from_numpy(np.concatenate(datas))
    files_read = tuple(str(base / f) for f in files + [meta_file])
    return _tensor_source(
        images,
        torch.tensor(labels, dtype=torch.long),
        classes,
        f"{kind}:{root}:{split} ({len(labels)} images)",
        files_read,
    )


# ---------------------------------------------------------------- SVHN (.mat, read with scipy)
def load_svhn_source(root: Path, split: str) -> RawDataset:
    import scipy.io

    if split not in ("train", "test", "extra"):
        raise BadInputError(f"svhn has splits train, test, extra, not '{split}'")
    path = root / f"{split}_32x32.mat"
    if not path.is_file():
        raise BadInputError(
            f"svhn file not found: {path}; point svhn:PATH at the folder holding {split}_32x32.mat "
            "(nothing is downloaded)"
        )
    try:
        mat = scipy.io.loadmat(str(path))
        x, y = mat["X"], mat["y"]
        images = torch.from_numpy(np.ascontiguousarray(np.transpose(x, (3, 2, 0, 1))).astype(np.uint8))
        labels = torch.from_numpy(y.astype(np.int64).reshape(-1) % 10)  # SVHN stores digit 0 as 10
    except Exception as e:  # scipy raises several types for corrupt files
        msg = f"{path} is not a readable SVHN .mat file ({first_sentence(e, 120)}); re-download it"
        raise BadInputError(msg) from None
    return _tensor_source(
        images, labels, [str(i) for i in range(10)], f"svhn:{root}:{split} ({len(labels)} images)", (str(path),)
    )


# ---------------------------------------------------------------- image folders
FOLDER_SPLITS = ("train", "val", "test")


def load_folder_source(root: Path, split: str | None, default_split: str = "test") -> RawDataset:
    """An ImageFolder (ROOT/CLASS/IMAGE), or one split of ROOT/{train,val,test}/CLASS/IMAGE.

    A named split must exist; with no split named, ROOT/``default_split`` is used when ROOT is split, and a
    split ROOT without that split is refused (it would otherwise read the split folders as classes)."""
    from torchvision.datasets import ImageFolder

    if not root.is_dir():
        raise BadInputError(f"image folder not found: {quote(root)}; expected FOLDER/CLASS/IMAGE files")
    present = [s for s in FOLDER_SPLITS if (root / s).is_dir()]
    if split is not None and split not in present:
        have = f"it has {', '.join(present)}" if present else "it is not split into train/val/test folders"
        raise BadInputError(f"folder {quote(root)} has no {quote(split)} split ({have}); name one that exists")
    if split is None and present:
        if default_split not in present:
            raise BadInputError(
                f"folder {quote(root)} is split into {', '.join(present)} but has no {quote(default_split)} "
                f"split; name one: folder:{root}:{present[-1]}"
            )
        split = default_split
    folder = root / split if split else root
    try:
        ds = ImageFolder(str(folder))
    except (FileNotFoundError, RuntimeError, OSError) as e:
        raise BadInputError(
            f"{folder} is not an image folder ({first_sentence(e, 140)}); expected FOLDER/CLASS/IMAGE files"
        ) from None
    samples = tuple((str(p), int(t)) for p, t in ds.samples)
    listing = hashlib.sha256("\n".join(f"{p}:{t}" for p, t in samples).encode()).hexdigest()
    return RawDataset(
        labels=torch.tensor([t for _, t in samples], dtype=torch.long),
        classes=list(ds.classes),
        get_image=FolderImages(samples),
        description=f"folder:{folder} ({len(samples)} images)",
        identity=listing,
        channels=3,
        names=FolderNames(samples),
    )


class FolderImages:
    """index → the decoded RGB PIL image (8-bit: the model's transform resizes before any float conversion)."""

    def __init__(self, samples: tuple[tuple[str, int], ...]):
        self.samples = samples

    def __call__(self, i: int) -> Image.Image:
        path = self.samples[i][0]
        try:
            with open(path, "rb") as f:
                img = Image.open(f)
                img.load()
                return img.convert("RGB")
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:  # PIL's ways of failing
            raise BadImageError(
                f"cannot read image {quote(path, 300)} ({first_sentence(e, 120)}); fix or remove it, "
                "or pass --bad-images skip to leave unreadable images out"
            ) from None


class FolderNames:
    def __init__(self, samples: tuple[tuple[str, int], ...]):
        self.samples = samples

    def __call__(self, i: int) -> str:
        return self.samples[i][0]


class BadImageError(BadInputError):
    """An image file that cannot be decoded (corrupt, truncated, unreadable)."""


# ---------------------------------------------------------------- tensors (safetensors)
def load_tensors_source(path: Path) -> RawDataset:
    from ..io.tensorfile import read_tensors

    tensors, meta = read_tensors(path)
    if "images" not in tensors or "labels" not in tensors:
        raise BadInputError(
            f"{path} must hold tensors 'images' [N,C,H,W] and 'labels' [N]; it has "
            f"{', '.join(sorted(tensors)) or 'none'}"
        )
    images, labels = tensors["images"], tensors["labels"]
    if images.dim() == 3:
        images = images.unsqueeze(1)
    if images.dim() != 4 or labels.dim() != 1 or images.shape[0] != labels.shape[0]:
        raise BadInputError(
            f"{path}: images {list(images.shape)} and labels {list(labels.shape)} do not match; "
            "expected [N,C,H,W] and [N]"
        )
    labels = check_labels(labels, None, str(path))
    n_cls = int(labels.max()) + 1 if labels.numel() else 0
    classes = (meta or {}).get("classes") if isinstance(meta, dict) else None
    if classes is not None:
        classes = Schema(str(path), "fix the file's class list").texts(classes, "classes")
    classes = classes or [str(i) for i in range(n_cls)]
    return _tensor_source(images, labels, classes, f"tensors:{path} ({labels.numel()} images)", (str(path),))
