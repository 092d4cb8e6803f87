"""The pooling file (format ``poolcli.pooling``): learned pooling weights P [k, M, N], the channel
normalisation, per-location diagnostics, and the fit's settings in the JSON manifest."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..errors import BadInputError
from .schema import Schema
from .tensorfile import read_tensors, write_tensors

POOL_FORMAT = "poolcli.pooling"
_REQUIRED = ("P", "channel_mean", "channel_scale")


def write_pooling(path: Path | str, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    write_tensors(path, tensors, {"format": POOL_FORMAT, "version": 1, **meta})


def read_pooling(path: Path | str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read and check a pooling file: grids typed and bounded, P of shape [k, Ho·Wo, H·W], one mean and
    one positive scale per channel, every number finite."""
    tensors, meta = read_tensors(path)
    if not isinstance(meta, dict) or meta.get("format") != POOL_FORMAT:
        raise BadInputError(f"{path} is not a poolcli pooling file; make one with 'poolcli fit-pooling'")
    missing = [k for k in _REQUIRED if k not in tensors] + [k for k in ("in_grid", "out_grid") if k not in meta]
    if missing:
        raise BadInputError(f"pooling file {path} lacks {', '.join(missing)}; re-run 'poolcli fit-pooling'")
    s = Schema(str(path), "the file is corrupt: re-run 'poolcli fit-pooling'")
    h, w = s.ints(meta["in_grid"], "in_grid", 2, 1, 4096)
    ho, wo = s.ints(meta["out_grid"], "out_grid", 2, 1, 4096)
    P, mean, scale = tensors["P"], tensors["channel_mean"], tensors["channel_scale"]
    if P.dim() != 3 or not 1 <= P.shape[0] <= 64 or tuple(P.shape[1:]) != (ho * wo, h * w):
        raise BadInputError(f"{path}: P has shape {list(P.shape)}, expected [k ≤ 64, {ho * wo}, {h * w}]; {s.fix}")
    if mean.dim() != 1 or mean.shape != scale.shape or mean.numel() < 1:
        raise BadInputError(f"{path}: channel_mean and channel_scale must be two equal-length vectors; {s.fix}")
    if not all(bool(torch.isfinite(t).all()) for t in (P, mean, scale)) or not bool((scale > 0).all()):
        raise BadInputError(f"{path} holds NaN/inf weights or a non-positive channel scale; {s.fix}")
    return tensors, meta
