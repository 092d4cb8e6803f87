"""Safetensors files with a JSON document in the header metadata.

Every poolcli file (checkpoint, statistics, pooling) is one ``.safetensors`` whose metadata key
``poolcli`` holds a JSON manifest. Reading never executes code; corrupt or truncated files give a
one-line :class:`BadInputError`.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..errors import BadInputError
from .atomic import atomic_path

META_KEY = "poolcli"


def _check_readable(path: Path) -> None:
    if not path.exists():
        raise BadInputError(f"file not found: {path}; check the path")
    if path.is_dir():
        raise BadInputError(f"{path} is a folder, expected a .safetensors file")
    if not os.access(path, os.R_OK):
        raise BadInputError(f"cannot read {path}: permission denied; fix its permissions")


def read_metadata(path: str | os.PathLike) -> dict[str, Any] | None:
    """Return the poolcli JSON manifest of ``path`` (None if the file has none), reading only the header."""
    path = Path(path)
    _check_readable(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise BadInputError(
            f"{path} is not a readable safetensors file ({_short(e)}); it may be truncated or corrupt: re-create or re-download it"
        ) from None
    raw = meta.get(META_KEY)
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        raise BadInputError(f"{path} has a corrupt poolcli manifest; re-create the file") from None


def read_tensors(path: str | os.PathLike, device: str = "cpu") -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """Read all tensors and the poolcli manifest."""
    path = Path(path)
    manifest = read_metadata(path)
    try:
        tensors: dict[str, torch.Tensor] = {}
        with safe_open(str(path), framework="pt", device=device) as f:
            for k in f.keys():
                tensors[k] = f.get_tensor(k)
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise BadInputError(
            f"{path} is not a readable safetensors file ({_short(e)}); it may be truncated or corrupt: re-create or re-download it"
        ) from None
    return tensors, manifest


def write_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], manifest: dict[str, Any],
                  verify: Callable[[Path], None] | None = None) -> None:
    """Write tensors plus the manifest atomically. Tensors are made dense, contiguous, unshared.

    ``verify(tmp)`` runs on the finished temporary file before it replaces ``path``; if it raises, nothing
    is left behind and the previous file is untouched."""
    clean = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    meta = {META_KEY: json.dumps(manifest, sort_keys=True), "format": "pt"}
    with atomic_path(path, suffix=".safetensors") as tmp:
        save_file(clean, str(tmp), metadata=meta)
        if verify is not None:
            verify(tmp)


def _short(e: BaseException) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return msg[:160]
