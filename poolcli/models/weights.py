"""Safe weight loading: safetensors, or torch.load(weights_only=True). Never executes pickled code.

Training checkpoints of timm's ``train.py`` and torchvision's reference scripts pickle an ``argparse.Namespace``
(and sometimes paths and numpy scalars) beside the weights: those few types only set attributes, so they are
allow-listed for ``weights_only`` loading, as timm does; anything else that needs code is refused. The weights
are unwrapped from ``state_dict``/``model`` (or, with ``use_ema``, ``state_dict_ema``/``model_ema``) and
``module.`` prefixes. Key mismatches are reported by name; the only keys ever left out are a classifier head's
when the caller asked for another number of classes (:func:`load_with_head`).
"""

from __future__ import annotations

import collections
import pickle
import warnings
from pathlib import Path

import torch
from torch import nn

from ..errors import BadInputError
from ..io.tensorfile import check_readable, read_tensors

_WRAPPER_KEYS = ("state_dict", "model", "net", "weights")
_EMA_KEYS = ("state_dict_ema", "model_ema", "ema")


def _harmless_globals() -> list:
    """Types a training checkpoint pickles beside the weights whose unpickling runs no code of the file's."""
    import argparse
    import pathlib

    out: list = [argparse.Namespace, pathlib.PosixPath, pathlib.PurePosixPath, pathlib.WindowsPath]
    out += [pathlib.PureWindowsPath]
    try:
        import numpy as np

        core = getattr(np, "_core", None) or np.core
        out += [core.multiarray.scalar, np.dtype, *{type(np.dtype(t)) for t in ("f8", "f4", "i8", "i4", "b1")}]
    except (ImportError, AttributeError):
        pass
    return out


def read_state_dict(path: str | Path, use_ema: bool = False) -> dict[str, torch.Tensor]:
    """Read a flat name→tensor mapping from ``.safetensors`` or ``.pt/.pth/.bin`` (a bare state_dict or a
    training checkpoint; ``use_ema``: its EMA weights)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        tensors, _ = read_tensors(path)
        if use_ema:
            raise BadInputError(f"--use-ema: {path} is a plain safetensors file with no EMA weights; drop --use-ema")
        return tensors
    check_readable(path, "a weights file (.safetensors, .pt, .pth)")
    try:
        with warnings.catch_warnings():  # torch's notes on pickle protocols would add lines to a one-line error
            warnings.simplefilter("ignore")
            with torch.serialization.safe_globals(_harmless_globals()):
                obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        text = str(e).strip()
        if "weights only load failed" not in text.lower():  # not torch's refusal: the bytes are no pickle
            raise BadInputError(_unreadable(path, text)) from None
        lines = [ln.strip().removeprefix("WeightsUnpickler error:").strip() for ln in text.splitlines()]
        first = next((ln for ln in lines if ln.lower().startswith("unsupported")), "it names a class or function")
        first = first.split(" was not an allowed")[0][:200]
        raise BadInputError(
            f"refusing to load {path}: it is a pickle that needs code to run ({first}); "
            "convert it to .safetensors in a trusted environment and pass that file"
        ) from None
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - the unpickler raises KeyError/IndexError/struct.error... on garbage
        raise BadInputError(_unreadable(path, f"{type(e).__name__}: {e}".strip())) from None
    return _flatten_checkpoint(obj, path, use_ema)


def _unreadable(path: Path, why: str) -> str:
    why = why.splitlines()[0][:160] if why else "no detail"
    return f"{path} is not a readable PyTorch weights file ({why}); it may be truncated or corrupt: re-save it"


def _is_state(v: object) -> bool:
    return isinstance(v, dict) and bool(v) and all(isinstance(t, torch.Tensor) for t in v.values())


def _flatten_checkpoint(obj: object, path: Path, use_ema: bool = False) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict) and not _is_state(obj):
        keys = _EMA_KEYS if use_ema else _WRAPPER_KEYS
        inner = next((obj[k] for k in keys if _is_state(obj.get(k))), None)
        if inner is None and use_ema:
            have = ", ".join(sorted(str(k) for k in obj)[:8])
            raise BadInputError(f"--use-ema: {path} holds no EMA weights (its keys: {have}); drop --use-ema")
        obj = inner if inner is not None else obj
    elif use_ema:
        raise BadInputError(f"--use-ema: {path} is a bare state_dict with no EMA weights; drop --use-ema")
    if not _is_state(obj):
        raise BadInputError(
            f"{path} holds no state_dict (a mapping of names to tensors); save model.state_dict() instead"
        )
    sd = dict(obj)  # type: ignore[arg-type]
    if "n_averaged" in sd and all(k.startswith("module.") for k in sd if k != "n_averaged"):
        del sd["n_averaged"]  # torch.optim.swa_utils.AveragedModel (torchvision references' model_ema)
    for prefix in ("module.", "_orig_mod."):  # DataParallel/DDP wrappers, torch.compile
        if all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix) :]: v for k, v in sd.items()}
    return sd


def head_names(model: nn.Module, num_classes: int | None) -> list[str]:
    """Module paths of the classifier head: timm's ``get_classifier()``, else the last Linear/Conv2d whose
    outputs are the classes (torchvision's ``fc``, ``classifier.1``, ``heads.head`` ...)."""
    by_id = {id(m): n for n, m in model.named_modules()}
    get = getattr(model, "get_classifier", None)
    if callable(get):
        try:
            heads = get()
        except (AttributeError, NotImplementedError, TypeError):
            heads = None
        heads = heads if isinstance(heads, (tuple, list)) else [heads]
        names = [by_id[id(h)] for h in heads if h is not None and id(h) in by_id and list(h.parameters())]
        if names:
            return names
    for name, m in reversed(list(model.named_modules())):
        outs = getattr(m, "out_features", getattr(m, "out_channels", None))
        if isinstance(m, (nn.Linear, nn.Conv2d)) and (num_classes is None or outs == num_classes):
            return [name]
    return []


def weights_classes(state: dict[str, torch.Tensor], model: nn.Module, num_classes: int | None) -> int | None:
    """The number of classes the weights' head was trained for (None: no head found or it fits)."""
    own = model.state_dict()
    for head in head_names(model, num_classes):
        w = state.get(f"{head}.weight")
        if w is not None and f"{head}.weight" in own and tuple(w.shape) != tuple(own[f"{head}.weight"].shape):
            return int(w.shape[0])
    return None


def load_with_head(
    model: nn.Module, state: dict[str, torch.Tensor], source: str, target: str, num_classes: int | None
) -> list[str]:
    """Load ``state`` strictly but for the classifier head, which is left freshly initialised where its
    shape differs (the weights were trained for other classes). Returns the head parameters left out."""
    own = model.state_dict()
    heads = head_names(model, num_classes)
    reset = [
        k
        for k in own
        if any(k.startswith(f"{h}.") for h in heads) and k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if reset:
        state = {**{k: v for k, v in state.items() if k not in reset}, **{k: own[k] for k in reset}}
    load_state_dict_strict(model, state, source, target)
    return reset


def load_state_dict_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str, target: str) -> None:
    """``load_state_dict(strict=True)`` with a one-line error naming the first mismatched keys."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    bad_shape = [
        f"{k} {list(state[k].shape)} vs {list(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or bad_shape:
        parts = []
        if bad_shape:
            parts.append("shape mismatch " + ", ".join(bad_shape[:3]) + (" ..." if len(bad_shape) > 3 else ""))
        if missing:
            parts.append(
                f"{len(missing)} missing (" + ", ".join(missing[:3]) + (" ..." if len(missing) > 3 else "") + ")"
            )
        if unexpected:
            parts.append(
                f"{len(unexpected)} unexpected ("
                + ", ".join(unexpected[:3])
                + (" ..." if len(unexpected) > 3 else "")
                + ")"
            )
        raise BadInputError(
            f"weights in {source} do not fit {target}: "
            + "; ".join(parts)
            + "; check the model name, --num-classes, --in-chans and --input-size (position embeddings are "
            "made for one size)"
        )
    if getattr(state, "_metadata", None) is None:
        # a plain mapping (safetensors, a bare dict) carries no module versions: show each module's
        # _load_from_state_dict its own current version, as the weights were made for this architecture
        own_meta = getattr(own, "_metadata", None)
        state = collections.OrderedDict(state)
        if own_meta is not None:
            state._metadata = own_meta  # type: ignore[attr-defined]
    model.load_state_dict(state, strict=True)
