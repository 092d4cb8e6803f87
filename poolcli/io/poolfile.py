"""The pooling file (format ``poolcli.pooling``): learned pooling weights P [k, M, N], the channel
normalisation, per-location diagnostics, and the fit's settings in the JSON manifest."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..errors import BadInputError
from .tensorfile import read_tensors, write_tensors

POOL_FORMAT = "poolcli.pooling"
_REQUIRED = ("P", "channel_mean", "channel_scale")


def write_pooling(path: Path | str, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    write_tensors(path, tensors, {"format": POOL_FORMAT, "version": 1, **meta})


def read_pooling(path: Path | str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors, meta = read_tensors(path)
    if not meta or meta.get("format") != POOL_FORMAT:
        raise BadInputError(f"{path} is not a poolcli pooling file; make one with 'poolcli fit-pooling'")
    missing = [k for k in _REQUIRED if k not in tensors] + [k for k in ("in_grid", "out_grid") if k not in meta]
    if missing:
        raise BadInputError(f"pooling file {path} lacks {', '.join(missing)}; re-run 'poolcli fit-pooling'")
    return tensors, meta
