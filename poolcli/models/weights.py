"""Safe weight loading: safetensors, or torch.load(weights_only=True). Never executes pickled code.

Key mismatches are reported by name; nothing is silently skipped with strict=False.
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

_WRAPPER_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model", "net", "weights")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a flat name→tensor mapping from ``.safetensors`` or ``.pt/.pth/.bin``."""
    path = Path(path)
    if path.suffix == ".safetensors":
        tensors, _ = read_tensors(path)
        return tensors
    check_readable(path, "a weights file (.safetensors, .pt, .pth)")
    try:
        with warnings.catch_warnings():  # torch's notes on pickle protocols would add lines to a one-line error
            warnings.simplefilter("ignore")
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
    return _flatten_checkpoint(obj, path)


def _unreadable(path: Path, why: str) -> str:
    why = why.splitlines()[0][:160] if why else "no detail"
    return f"{path} is not a readable PyTorch weights file ({why}); it may be truncated or corrupt: re-save it"


def _flatten_checkpoint(obj: object, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict):
        for key in _WRAPPER_KEYS:
            inner = obj.get(key)
            if isinstance(inner, dict) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                obj = inner
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise BadInputError(
            f"{path} holds no state_dict (a mapping of names to tensors); save model.state_dict() instead"
        )
    sd = dict(obj)
    if all(k.startswith("module.") for k in sd):  # DataParallel/DDP wrappers
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return sd


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
            + "; check the model name, --num-classes and --in-chans"
        )
    if getattr(state, "_metadata", None) is None:
        # a plain mapping (safetensors, a bare dict) carries no module versions: show each module's
        # _load_from_state_dict its own current version, as the weights were made for this architecture
        own_meta = getattr(own, "_metadata", None)
        state = collections.OrderedDict(state)
        if own_meta is not None:
            state._metadata = own_meta  # type: ignore[attr-defined]
    model.load_state_dict(state, strict=True)
