"""The poolcli checkpoint: one ``.safetensors`` with a JSON manifest in its metadata.

Loading = build the base architecture, apply the recorded site swaps in order, then
``load_state_dict(strict=True)``. The round trip is bit-exact for the stored dtype.
"""

from __future__ import annotations

import collections
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data.transforms import PhotoGeometry
from ..errors import BadInputError, RunError
from ..io.tensorfile import read_metadata, read_tensors, write_tensors
from .bundle import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, ModelBundle
from .manifest import validate_manifest
from .spec import build_base, default_geometry
from .surgery import apply_swaps
from .weights import load_state_dict_strict


def save_checkpoint(
    model: nn.Module | ModelBundle,
    manifest: dict[str, Any] | None,
    path: str | os.PathLike,
    dtype: torch.dtype | None = None,
    verify: bool = False,
) -> None:
    """Write ``model``'s state_dict and ``manifest`` atomically to ``path``.

    ``model`` may be a :class:`ModelBundle` (its manifest is used when ``manifest`` is None).
    ``dtype`` optionally stores floating tensors at lower precision (recorded in the manifest).
    The modules' state_dict versions (``_metadata``, read by ``_load_from_state_dict`` hooks such as
    torchvision MNASNet's) are recorded so that loading shows each module what it saw at save time.
    ``verify``: load the written file strictly and compare its outputs with ``model`` before it replaces
    ``path`` (a file that does not reload is a failed write: nothing is left behind).
    """
    if isinstance(model, ModelBundle):
        manifest = manifest or model.manifest()
        module = model.module
    else:
        module = model
        if manifest is None:
            raise BadInputError("save_checkpoint needs a manifest (or pass a ModelBundle)")
    if manifest.get("format") != CHECKPOINT_FORMAT:
        raise BadInputError("manifest is not a poolcli checkpoint manifest; build it with ModelBundle.manifest()")
    state = module.state_dict()
    versions = {k: int(v["version"]) for k, v in getattr(state, "_metadata", {}).items() if "version" in v}
    manifest = {**manifest, "module_versions": versions}
    if dtype is not None:
        state = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in state.items()}
        manifest = {**manifest, "storage_dtype": str(dtype).replace("torch.", "")}
    input_size = tuple(manifest["input_size"])
    check = (lambda tmp: _verify_reload(module, tmp, input_size, exact=dtype is None)) if verify else None
    write_tensors(
        path,
        state,
        manifest,
        verify=check,
        what="the checkpoint",
        hint="the model's weights are not finite (training diverged or the input was): lower --lr or check the images",
    )


def _verify_reload(module: nn.Module, tmp: Path, input_size: tuple[int, ...], exact: bool) -> None:
    try:
        back = load_checkpoint(tmp).module
    except BadInputError as e:
        raise RunError(f"the written checkpoint does not reload ({e}); nothing was written") from None
    param = next(module.parameters(), None)
    x = torch.randn(2, *input_size, generator=torch.Generator().manual_seed(0))
    if param is not None:
        x = x.to(param.device, param.dtype if param.is_floating_point() else torch.float32)
    was = module.training
    module.eval()
    try:
        with torch.no_grad():
            want, got = module(x), back.to(x.device)(x)
    finally:
        module.train(was)
    want = want if isinstance(want, torch.Tensor) else want[0]
    got = got if isinstance(got, torch.Tensor) else got[0]
    same = torch.allclose(
        want.float(), got.float(), rtol=0 if exact else 1e-2, atol=0 if exact else 1e-2, equal_nan=True
    )
    if not same:
        raise RunError(
            "the written checkpoint reloads to a model with different outputs; nothing was written "
            "(report it with the model and --swap)"
        )


def load_checkpoint(path: str | os.PathLike) -> ModelBundle:
    path = Path(path)
    if path.suffix in (".pt", ".pth", ".bin"):
        raise BadInputError(
            f"{path} is not a poolcli checkpoint; give its architecture (timm:NAME or tv:NAME) and pass "
            f"it with --weights {path}"
        )
    manifest = read_metadata(path)
    if not isinstance(manifest, dict) or manifest.get("format") != CHECKPOINT_FORMAT:
        raise BadInputError(
            f"{path} has no poolcli manifest; give its architecture (timm:NAME or tv:NAME) and pass "
            f"the file with --weights {path}"
        )
    version = manifest.get("version")
    if isinstance(version, int) and not isinstance(version, bool) and version > CHECKPOINT_VERSION:
        raise BadInputError(f"{path} was written by a newer poolcli (checkpoint version {version}); upgrade poolcli")
    validate_manifest(manifest, str(path))
    base = manifest["base"]
    module = build_base(base["source"], base["name"], dict(base.get("kwargs", {})))
    swaps = list(manifest.get("swaps", []))
    apply_swaps(module, swaps, trusted=False)
    state, _ = read_tensors(path)
    versions = manifest.get("module_versions")
    if isinstance(versions, dict):
        state = collections.OrderedDict(state)
        state._metadata = collections.OrderedDict((str(k), {"version": int(v)}) for k, v in versions.items())  # type: ignore[attr-defined]
    load_state_dict_strict(module, state, str(path), f"{base['source']}:{base['name']} with {len(swaps)} swap(s)")
    module.eval()
    return ModelBundle(
        module=module,
        base=base,
        swaps=swaps,
        classes=manifest.get("classes"),
        input_size=tuple(manifest["input_size"]),
        mean=tuple(manifest["mean"]),
        std=tuple(manifest["std"]),
        extra=manifest.get("extra", {}),
        spec=str(path),
        geometry=(
            PhotoGeometry.from_json(manifest["preprocess"])
            if manifest.get("preprocess")
            else default_geometry(base["source"], base["name"], module)
        ),
        weights=f"checkpoint:{path}",
    )


def load_model(path: str | os.PathLike) -> nn.Module:
    """Load a poolcli checkpoint as an ``nn.Module`` (eval mode; new pooling parameters trainable)."""
    return load_checkpoint(path).module
