"""Readers for the published robustness arrays (Hendrycks & Dietterich, ICLR 2019; github.com/hendrycks/robustness):

* ``cifar10c:DIR`` — CIFAR-10-C / CIFAR-100-C: one ``<corruption>.npy`` per corruption, uint8
  ``[5·n, 32, 32, 3]``, five blocks of the same n test images for severities 1..5 in order, and ``labels.npy``
  ``[5·n]`` (the n labels tiled five times);
* ``cifar10p:DIR`` — CIFAR-10-P: one ``<perturbation>.npy`` per perturbation, uint8 ``[n, T, 32, 32, 3]`` (T
  read from the array), and ``labels.npy`` ``[n]`` when present (flip probabilities need no labels).

Files are untrusted: read with ``numpy.load(allow_pickle=False)`` memory-mapped, their shape, dtype and the
label tiling checked before anything is evaluated. Only names the benchmarks define are read; other ``.npy``
files in the folder are listed as ignored. Class names come from ``classes.txt`` (one per line) when the folder
has one, else CIFAR-10's names for 10 classes, else the indices.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import BadInputError
from ..text import first_sentence, quote

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
C_SEVERITIES = 5
MAX_LABEL = 100_000  # more classes than any benchmark: a larger label is a broken file, not a class


def _load(path: Path) -> np.ndarray:
    if path.exists() and not path.is_file():
        raise BadInputError(f"{path} is not a regular file (a device, FIFO or folder); give the published .npy array")
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise BadInputError(
            f"{path} is not a readable .npy array ({first_sentence(e, 100)}); re-extract the published archive"
        ) from None
    if not isinstance(arr, np.ndarray):
        raise BadInputError(f"{path} holds several arrays (an .npz?); give the published one-array .npy files")
    return arr


def _labels(path: Path, n_expected: int | None) -> np.ndarray:
    arr = _load(path)
    if arr.ndim != 1 or arr.dtype.kind not in "iu":
        raise BadInputError(f"{path} has shape {list(arr.shape)} and dtype {arr.dtype}; labels are a 1-D integer array")
    if n_expected is not None and arr.shape[0] != n_expected:
        raise BadInputError(
            f"{path} holds {arr.shape[0]} labels for {n_expected} images; the arrays do not belong together"
        )
    if arr.size and int(arr.min()) < 0:
        raise BadInputError(f"{path}: label {int(arr.min())} is negative; labels are class indices")
    if arr.size and int(arr.max()) > MAX_LABEL:
        raise BadInputError(
            f"{path}: label {int(arr.max())} is not a class index (at most {MAX_LABEL:,}); a broken file"
        )
    return np.asarray(arr, dtype=np.int64)


def _classes(folder: Path, labels: np.ndarray) -> list[str]:
    k = int(labels.max()) + 1 if labels.size else 0
    names_file = folder / "classes.txt"
    if names_file.is_file():
        try:
            names = [line.strip() for line in names_file.read_text(encoding="utf-8").splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as e:
            raise BadInputError(
                f"{names_file} is unreadable ({type(e).__name__}); one class name per line, UTF-8"
            ) from None
        if len(names) < k:
            raise BadInputError(f"{names_file} names {len(names)} classes but labels go up to {k - 1}")
        return names
    return list(CIFAR10_CLASSES) if k <= 10 and k > 0 else [str(i) for i in range(k)]


def _image_array(path: Path, arr: np.ndarray, lead: int) -> None:
    """``arr`` is uint8 [..lead dims.., H, W, C] with C 1 or 3."""
    if arr.dtype != np.uint8 or arr.ndim != lead + 3 or arr.shape[-1] not in (1, 3) or min(arr.shape[lead:]) < 1:
        raise BadInputError(
            f"{path} has shape {list(arr.shape)} and dtype {arr.dtype}; the published layout is uint8 "
            f"[{'5·n' if lead == 1 else 'n, T'}, H, W, 3]"
        )


class CorruptionArrays:
    """``cifar10c:DIR``: the corrupted images of each corruption and severity, by base image index."""

    def __init__(self, folder: str | Path, known: tuple[str, ...]):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise BadInputError(
                f"cifar10c folder not found: {quote(self.folder)}; point cifar10c:DIR at the extracted CIFAR-10-C"
            )
        labels_path = self.folder / "labels.npy"
        if not labels_path.exists() and not labels_path.is_symlink():
            raise BadInputError(
                f"{labels_path} not found: CIFAR-10-C's folder holds labels.npy next to <corruption>.npy"
            )
        all_labels = _labels(labels_path, None)
        if all_labels.shape[0] % C_SEVERITIES or all_labels.shape[0] == 0:
            raise BadInputError(f"{labels_path} holds {all_labels.shape[0]} labels, not 5 blocks of n (severities 1-5)")
        self.n = all_labels.shape[0] // C_SEVERITIES
        blocks = all_labels.reshape(C_SEVERITIES, self.n)
        if not (blocks == blocks[:1]).all():
            raise BadInputError(
                f"{labels_path}: the five severity blocks carry different labels; not the published layout"
            )
        self.labels = torch.from_numpy(blocks[0].copy())
        self.classes = _classes(self.folder, blocks[0])
        self.arrays: dict[str, np.ndarray] = {}
        self.ignored = sorted(p.name for p in self.folder.glob("*.npy") if p.stem not in known and p.stem != "labels")
        for name in known:
            path = self.folder / f"{name}.npy"
            if not path.exists() and not path.is_symlink():
                continue
            arr = _load(path)
            _image_array(path, arr, 1)
            if arr.shape[0] != C_SEVERITIES * self.n:
                raise BadInputError(f"{path} holds {arr.shape[0]} images but labels.npy {C_SEVERITIES * self.n}")
            self.arrays[name] = arr
        if not self.arrays:
            raise BadInputError(
                f"no <corruption>.npy in {self.folder}: expected files named like gaussian_noise.npy "
                f"({', '.join(known[:4])}, ...)"
            )
        shapes = {a.shape[1:] for a in self.arrays.values()}
        if len(shapes) > 1:
            raise BadInputError(f"the arrays in {self.folder} have different image shapes {sorted(shapes)}")
        self.image_shape = next(iter(shapes))  # H, W, C
        self.names = tuple(self.arrays)
        self.description = f"cifar10c:{self.folder} ({self.n} images × {len(self.names)} corruptions × 5 severities)"

    def images(self, name: str, severity: int, index: torch.Tensor) -> torch.Tensor:
        """uint8 [b, C, H, W] of base images ``index`` at ``severity`` (1..5)."""
        rows = (severity - 1) * self.n + index.numpy()
        return torch.from_numpy(np.ascontiguousarray(self.arrays[name][rows])).permute(0, 3, 1, 2).contiguous()

    def describe(self) -> dict[str, Any]:
        return {"folder": str(self.folder), "images": self.n, "corruptions": list(self.names), "ignored": self.ignored}


class PerturbationArrays:
    """``cifar10p:DIR``: each perturbation's frame sequences, by image index."""

    def __init__(self, folder: str | Path, known: tuple[str, ...]):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise BadInputError(
                f"cifar10p folder not found: {quote(self.folder)}; point cifar10p:DIR at the extracted CIFAR-10-P"
            )
        self.arrays: dict[str, np.ndarray] = {}
        self.ignored = sorted(p.name for p in self.folder.glob("*.npy") if p.stem not in known and p.stem != "labels")
        n = None
        for name in known:
            path = self.folder / f"{name}.npy"
            if not path.exists() and not path.is_symlink():
                continue
            arr = _load(path)
            _image_array(path, arr, 2)
            if arr.shape[1] < 2:
                raise BadInputError(f"{path} has sequences of {arr.shape[1]} frame; flip probability needs ≥ 2")
            if n is not None and arr.shape[0] != n:
                raise BadInputError(f"{path} holds {arr.shape[0]} sequences, the other arrays {n}")
            n = arr.shape[0]
            self.arrays[name] = arr
        if not self.arrays or n is None:
            raise BadInputError(
                f"no <perturbation>.npy in {self.folder}: expected files named like translate.npy "
                f"({', '.join(known[:4])}, ...)"
            )
        self.n = n
        shapes = {a.shape[2:] for a in self.arrays.values()}
        if len(shapes) > 1:
            raise BadInputError(f"the arrays in {self.folder} have different image shapes {sorted(shapes)}")
        self.image_shape = next(iter(shapes))
        labels_path = self.folder / "labels.npy"
        self.has_labels = labels_path.exists() or labels_path.is_symlink()
        lab = _labels(labels_path, n) if self.has_labels else np.zeros(n, dtype=np.int64)
        self.labels = torch.from_numpy(lab.copy())
        self.classes = _classes(self.folder, lab) if self.has_labels else None  # flips need no classes
        self.names = tuple(self.arrays)
        self.frames = {k: int(a.shape[1]) for k, a in self.arrays.items()}
        self.description = f"cifar10p:{self.folder} ({n} sequences × {len(self.names)} perturbations)"

    def sequences(self, name: str, index: torch.Tensor) -> torch.Tensor:
        """uint8 [b, T, C, H, W] of sequences ``index``."""
        return (
            torch.from_numpy(np.ascontiguousarray(self.arrays[name][index.numpy()])).permute(0, 1, 4, 2, 3).contiguous()
        )

    def describe(self) -> dict[str, Any]:
        return {
            "folder": str(self.folder),
            "sequences": self.n,
            "frames": self.frames,
            "labels": self.has_labels,
            "ignored": self.ignored,
        }
