"""Safetensors files with a JSON document in the header metadata.

Every poolcli file (checkpoint, statistics, pooling) is one ``.safetensors`` whose metadata key
``poolcli`` holds a JSON manifest. Reading never executes code; corrupt or truncated files give a
one-line :class:`BadInputError`.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from ..errors import BadInputError, RunError
from ..text import quote
from .atomic import atomic_path

META_KEY = "poolcli"


def check_readable(path: Path, what: str = "a .safetensors file") -> None:
    """An existing, readable regular file (a FIFO or device would block or stream forever)."""
    try:
        path.stat()
    except FileNotFoundError:
        raise BadInputError(f"file not found: {quote(path, 300)}; check the path") from None
    except OSError as e:
        raise BadInputError(f"cannot read {quote(path, 300)}: {e.strerror}; check the path") from None
    if path.is_dir():
        raise BadInputError(f"{quote(path, 300)} is a folder, expected {what}")
    if not path.is_file():
        raise BadInputError(f"{quote(path, 300)} is not a regular file (a FIFO, socket or device); give {what}")
    if not os.access(path, os.R_OK):
        raise BadInputError(f"cannot read {quote(path, 300)}: permission denied; fix its permissions")


def read_metadata(path: str | os.PathLike) -> dict[str, Any] | None:
    """Return the poolcli JSON manifest of ``path`` (None if the file has none), reading only the header."""
    path = Path(path)
    check_readable(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise BadInputError(
            f"{path} is not a readable safetensors file ({_short(e)}); it may be truncated or corrupt: re-create "
            "or re-download it"
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
            f"{path} is not a readable safetensors file ({_short(e)}); it may be truncated or corrupt: re-create "
            "or re-download it"
        ) from None
    return tensors, manifest


_DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


class NonFiniteError(RunError):
    """A tensor about to be written holds NaN or ±inf."""


def check_finite(tensors: dict[str, torch.Tensor], what: str, hint: str = "") -> None:
    """Refuse NaN/±inf in floating tensors: a file is never the place a numerical failure is discovered."""
    bad = [k for k, v in sorted(tensors.items()) if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        names = ", ".join(bad[:4]) + (f" and {len(bad) - 4} more" if len(bad) > 4 else "")
        raise NonFiniteError(
            f"{what} would hold NaN/inf values (in {names}); nothing was written" + (f"; {hint}" if hint else "")
        )


def serialize(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> tuple[bytes, list[torch.Tensor]]:
    """The safetensors header (sorted keys, no timestamps: same tensors and metadata give the same bytes)
    and the tensors in file order. Written by hand rather than with ``safetensors.torch.save_file``, whose
    metadata order varies between processes and which needs a second copy of every tensor in memory."""
    header: dict[str, Any] = {"__metadata__": dict(sorted(metadata.items()))}
    order, offset = [], 0
    for name in sorted(tensors):
        t = tensors[name]
        if t.dtype not in _DTYPES:
            raise RunError(f"cannot store tensor {name} of dtype {t.dtype} in a safetensors file")
        size = t.numel() * t.element_size()
        header[name] = {"dtype": _DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + size]}
        order.append(t)
        offset += size
    raw = json.dumps(header, separators=(",", ":"), sort_keys=False).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw, order


def json_safe(obj: Any) -> Any:
    """Strict JSON: NaN/±inf floats become null (an undefined summary value, never a number); paths become text."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return obj


def write_tensors(
    path: str | os.PathLike,
    tensors: dict[str, torch.Tensor],
    manifest: dict[str, Any],
    verify: Callable[[Path], None] | None = None,
    what: str = "the file",
    hint: str = "",
) -> None:
    """Write tensors plus the manifest atomically (see :mod:`poolcli.io.atomic`); byte-reproducible.

    Floating tensors must be finite (else :class:`NonFiniteError`, with ``hint`` as the fix, and nothing is
    written). ``verify(tmp)`` runs on the finished temporary file before it replaces ``path``; if it raises,
    nothing is left behind and the previous file is untouched."""
    clean = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    check_finite(clean, what, hint)
    meta = {META_KEY: json.dumps(json_safe(manifest), sort_keys=True, allow_nan=False), "format": "pt"}
    head, order = serialize(clean, meta)
    with atomic_path(path, suffix=".safetensors") as tmp:
        with open(tmp, "wb") as f:
            f.write(head)
            for t in order:
                if t.numel():
                    f.write(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
        if verify is not None:
            verify(tmp)


def _short(e: BaseException) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return msg[:160]
