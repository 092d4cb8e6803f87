"""String factory for pooling operators: ``"name:key=value,key=value"`` → ``nn.Module``.

A factory takes the parsed params and the module being replaced (or None) so that it can inherit
kernel/stride/channels from it. Checkpoints store ``(op, params)`` and rebuild through this table,
so every factory must be deterministic in its params (tensors come from the state_dict).
"""
from __future__ import annotations

from typing import Any, Callable

from torch import nn

from ..errors import BadInputError

Factory = Callable[[dict[str, Any], "nn.Module | None"], nn.Module]
_REGISTRY: dict[str, tuple[Factory, str]] = {}
_TAKES_CHANNELS: set[str] = set()
_WINDOWED: set[str] = set()
_CEIL: set[str] = set()


def register(name: str, help: str = "", takes_channels: bool = False, window: bool = False,
             ceil: bool = False) -> Callable[[Factory], Factory]:
    """``takes_channels``: the operator has per-channel parameters and accepts ``channels=C`` (callers
    that know the site's shape, like ``convert``, fill it in). ``window``: a local pool that takes
    ``kernel``, ``stride`` and ``padding`` (convert chooses them to keep a site's grid). ``ceil``: it also
    takes ``ceil_mode`` (others meet a ceil-mode grid through a run-time pad)."""
    def deco(fn: Factory) -> Factory:
        _REGISTRY[name] = (fn, help)
        for flag, group in ((takes_channels, _TAKES_CHANNELS), (window, _WINDOWED), (ceil, _CEIL)):
            if flag:
                group.add(name)
        return fn

    return deco


def takes_channels(name: str) -> bool:
    _load_builtin()
    return name in _TAKES_CHANNELS


def is_windowed(name: str) -> bool:
    _load_builtin()
    return name in _WINDOWED


def takes_ceil_mode(name: str) -> bool:
    _load_builtin()
    return name in _CEIL


def _value(text: str) -> Any:
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_op_spec(text: str) -> tuple[str, dict[str, Any]]:
    """``gem:p=3,eps=1e-6`` → ("gem", {"p": 3, "eps": 1e-6}); ``learned:pool.safetensors`` → ("learned", {"file": ...})."""
    name, _, rest = text.partition(":")
    params: dict[str, Any] = {}
    if rest:
        for part in rest.split(","):
            key, eq, val = part.partition("=")
            if not eq:
                if "file" in params:
                    raise BadInputError(f"bad operator spec '{text}': '{part}' is not key=value")
                params["file"] = key
            else:
                params[key.strip()] = _value(val.strip())
    return name.strip(), params


def available() -> dict[str, str]:
    _load_builtin()
    return {k: h for k, (_, h) in sorted(_REGISTRY.items())}


def build_op(name: str, params: dict[str, Any], replaced: nn.Module | None = None) -> nn.Module:
    _load_builtin()
    if name not in _REGISTRY:
        raise BadInputError(f"unknown pooling operator '{name}'; available: {', '.join(sorted(_REGISTRY))}")
    try:
        return _REGISTRY[name][0](dict(params), replaced)
    except (TypeError, ValueError, KeyError) as e:
        raise BadInputError(f"bad parameters for '{name}': {str(e).strip()[:200]}; see 'poolcli convert --help' for the "
                            "operators and their parameters") from None


def build_from_spec(text: str, replaced: nn.Module | None = None) -> nn.Module:
    name, params = parse_op_spec(text)
    return build_op(name, params, replaced)


def _load_builtin() -> None:
    from . import factories  # noqa: F401  (registers the built-in operators)
