"""Pretrained weights from the local caches only: poolcli never downloads.

* timm: the Hugging Face hub cache (``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else
  ``~/.cache/huggingface/hub``: ``models--timm--NAME.TAG/snapshots/REV/model.safetensors``), then torch hub's
  (``$TORCH_HOME/hub/checkpoints/FILE`` of the weights' URL). The file is read by poolcli's safe reader and
  handed to timm's own ``load_pretrained`` (``pretrained_cfg_overlay={"state_dict": ...}``), which adapts it
  as timm does: position embeddings to the input size, the first conv to ``in_chans``, the classifier left
  out when ``num_classes`` differs.
* torchvision: the file of the weights enum's URL in ``$TORCH_HOME/hub/checkpoints`` (where
  ``torchvision.models.get_model(..., weights=...)`` caches it); a head for other classes is re-initialised.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import BadInputError
from ..text import quote
from .weights import load_with_head, read_state_dict

HF_FILES = ("model.safetensors", "pytorch_model.bin")


def hf_cache_dir() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    return Path(home) / "hub"


def torch_hub_checkpoints() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def _hf_cached(repo_id: str, filenames: tuple[str, ...]) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    for name in filenames:
        found = try_to_load_from_cache(repo_id, name, cache_dir=str(hf_cache_dir()))
        if isinstance(found, str) and os.path.isfile(found):
            return Path(found)
    return None


def _missing(spec: str, looked: list[str], fill: str) -> BadInputError:
    return BadInputError(
        f"no cached pretrained weights for {spec} (poolcli never downloads); looked in {'; '.join(looked)}. "
        f"Fill the cache where there is internet ({fill}) and copy it here, or pass --weights FILE"
    )


def timm_pretrained(name: str, kwargs: dict[str, Any], use_ema: bool = False) -> tuple[nn.Module, str]:
    """Build timm model ``name`` with the cached pretrained weights; returns it and the file used."""
    import timm

    probe = timm.create_model(name, pretrained=False)
    cfg = dict(getattr(probe, "pretrained_cfg", {}) or {})
    hub_id, url = cfg.get("hf_hub_id"), cfg.get("url")
    path, looked = None, []
    if hub_id:
        names = (cfg["hf_hub_filename"],) if cfg.get("hf_hub_filename") else HF_FILES
        path = _hf_cached(hub_id, names)
        looked.append(str(hf_cache_dir() / f"models--{hub_id.replace('/', '--')}"))
    if path is None and url:
        candidate = torch_hub_checkpoints() / os.path.basename(url)
        looked.append(str(candidate))
        path = candidate if candidate.is_file() else None
        if path is not None and cfg.get("custom_load"):  # e.g. the original .npz ViT files: timm's own reader
            raise BadInputError(
                f"timm:{name}'s cached {path.name} needs timm's custom loader, which poolcli does not run; "
                "use the Hugging Face hub copy (model.safetensors) or pass --weights FILE"
            )
    if path is None:
        if not looked:
            raise BadInputError(f"timm:{name} has no pretrained weights; drop --pretrained")
        tag = f"{cfg.get('architecture', name)}.{cfg['tag']}" if cfg.get("tag") else name
        raise _missing(
            f"timm:{name}", looked, f"python -c \"import timm; timm.create_model('{tag}', pretrained=True)\""
        )
    state = read_state_dict(path, use_ema=use_ema)
    overlay = {"state_dict": state, "source": "timm", "file": None}
    try:
        module = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
    except RuntimeError as e:
        first = (str(e).strip().splitlines() or ["no detail"])[0][:200]
        raise BadInputError(
            f"cached weights {quote(path)} do not fit timm:{name} ({first}); re-fill the cache"
        ) from None
    return module, str(path)


def tv_weights(name: str, tag: str | None = None) -> Any:
    import torchvision

    try:
        enum = torchvision.models.get_model_weights(name)
    except (ValueError, KeyError):
        raise BadInputError(f"tv:{name} has no pretrained weights in torchvision; drop --pretrained") from None
    if tag is None:
        return enum.DEFAULT
    try:
        return enum[tag]
    except KeyError:
        names = ", ".join(w.name for w in enum)
        raise BadInputError(f"tv:{name} has no weights {quote(tag)}; choose one of {names}") from None


def tv_pretrained(
    name: str, module: nn.Module, num_classes: int | None, tag: str | None = None, use_ema: bool = False
) -> tuple[list[str], str]:
    """Load the cached torchvision weights into ``module``; returns the head parameters left out and the file."""
    weights = tv_weights(name, tag)
    path = torch_hub_checkpoints() / os.path.basename(weights.url)
    if not path.is_file():
        raise _missing(
            f"tv:{name} ({weights})",
            [str(path)],
            f"python -c \"import torchvision; torchvision.models.get_model('{name}', weights='{weights}')\"",
        )
    state = read_state_dict(path, use_ema=use_ema)
    reset = load_with_head(module, state, str(path), f"tv:{name}", num_classes)
    return reset, str(path)
