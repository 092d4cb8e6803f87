"""String factory for pooling operators: ``"name:key=value,key=value"`` → ``nn.Module``.

A factory takes the parsed params and the module being replaced (or None) so that it can inherit
kernel/stride/channels from it. Checkpoints store ``(op, params)`` and rebuild through this table,
so every factory must be deterministic in its params (tensors come from the state_dict).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

from torch import nn

from ..errors import BadInputError
from ..text import first_sentence, quote

Factory = Callable[[dict[str, Any], "nn.Module | None"], nn.Module]


@dataclasses.dataclass(frozen=True)
class Param:
    """One declared operator parameter: its type, range and meaning.

    ``kind``: "int", "float", "bool", "size" (an int, or [h, w] / HxW), "choice" (one of ``choices``) or
    "file" (a path; given on the command line only, never read from a checkpoint's manifest).
    ``low``/``high``: the closed range of a number (of each entry of a size); ``above``: an open lower bound.
    ``nullable``: JSON null is allowed (the factory's "not set")."""

    kind: str
    help: str = ""
    low: float | None = None
    high: float | None = None
    above: float | None = None
    choices: tuple[str, ...] = ()
    nullable: bool = False

    def describe(self) -> str:
        if self.kind == "choice":
            return "|".join(self.choices)
        lo = f"> {self.above:g}" if self.above is not None else (f"≥ {self.low:g}" if self.low is not None else "")
        hi = f"≤ {self.high:g}" if self.high is not None else ""
        rng = " and ".join(x for x in (lo, hi) if x)
        return f"{self.kind}{' ' + rng if rng else ''}"


_REGISTRY: dict[str, tuple[Factory, str, dict[str, Param]]] = {}
_TAKES_CHANNELS: set[str] = set()
_WINDOWED: set[str] = set()
_CEIL: set[str] = set()

WINDOW_PARAMS = {
    "kernel": Param("size", "window size", low=1, high=64),
    "stride": Param("size", "window step", low=1, high=64),
    "padding": Param("size", "zero padding per side", low=0, high=32),
}
CHANNELS = Param("int", "input channels (convert fills it in)", low=1, high=65536)


def register(
    name: str,
    help: str = "",
    params: dict[str, Param] | None = None,
    takes_channels: bool = False,
    window: bool = False,
    ceil: bool = False,
) -> Callable[[Factory], Factory]:
    """``params``: the parameters the operator takes (validated before its factory runs).
    ``takes_channels``: the operator has per-channel parameters and accepts ``channels=C`` (callers
    that know the site's shape, like ``convert``, fill it in). ``window``: a local pool that takes
    ``kernel``, ``stride`` and ``padding`` (convert chooses them to keep a site's grid). ``ceil``: it also
    takes ``ceil_mode`` (others meet a ceil-mode grid through a run-time pad)."""

    def deco(fn: Factory) -> Factory:
        declared = dict(params or {})
        if window:
            declared = {**WINDOW_PARAMS, **declared}
        if ceil:
            declared["ceil_mode"] = Param("bool", "ceil rounding of the output grid")
        if takes_channels:
            declared.setdefault("channels", CHANNELS)
        _REGISTRY[name] = (fn, help, declared)
        for flag, group in ((takes_channels, _TAKES_CHANNELS), (window, _WINDOWED), (ceil, _CEIL)):
            if flag:
                group.add(name)
        return fn

    return deco


def declared_params(name: str) -> dict[str, Param]:
    _load_builtin()
    return dict(_REGISTRY[name][2]) if name in _REGISTRY else {}


def _number(name: str, key: str, p: Param, v: Any, integral: bool) -> int | float:
    kind = "an integer" if integral else "a number"
    bad = f"{name}:{key}={quote(v, 40)[1:-1]} is not {kind}; {key} takes {p.describe()}"
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        raise BadInputError(bad)
    try:
        x = float(v)
    except ValueError:
        raise BadInputError(bad) from None
    if not math.isfinite(x):
        raise BadInputError(
            f"{name}:{key} must be a finite number, got {quote(v, 40)[1:-1]}; {key} takes {p.describe()}"
        )
    if integral:
        if x != int(x):
            raise BadInputError(bad)
        x = int(x)
    if (
        (p.low is not None and x < p.low)
        or (p.high is not None and x > p.high)
        or (p.above is not None and x <= p.above)
    ):
        raise BadInputError(f"{name}:{key}={x:g} is out of range; {key} takes {p.describe()}")
    return x


def _check_value(name: str, key: str, p: Param, v: Any) -> Any:
    if v is None and p.nullable:
        return None
    if p.kind == "bool":
        if isinstance(v, bool):
            return v
        if isinstance(v, str) and v.lower() in ("true", "false"):
            return v.lower() == "true"
        raise BadInputError(f"{name}:{key} must be true or false, got {quote(v, 40)}")
    if p.kind in ("int", "float"):
        return _number(name, key, p, v, p.kind == "int")
    if p.kind == "size":
        if isinstance(v, str) and "x" in v.lower():
            v = v.lower().split("x")
        if isinstance(v, (list, tuple)):
            if len(v) != 2:
                raise BadInputError(f"{name}:{key} takes one int or two (HxW), got {quote(v, 40)}")
            return [_number(name, key, p, x, True) for x in v]
        return _number(name, key, p, v, True)
    if p.kind == "choice":
        if v not in p.choices:
            raise BadInputError(f"{name}:{key} must be one of {', '.join(p.choices)}, got {quote(v, 40)}")
        return v
    if p.kind == "file":
        if not isinstance(v, str) or not v:
            raise BadInputError(f"{name}:{key} must be a file path, got {quote(v, 40)}")
        return v
    raise AssertionError(p.kind)


def validate_params(name: str, params: dict[str, Any], allow_files: bool = True) -> dict[str, Any]:
    """Typed, range-checked copy of ``params`` for operator ``name``; a one-line BadInputError that lists
    the valid parameters otherwise. ``allow_files=False`` (a checkpoint's manifest) refuses file parameters."""
    _load_builtin()
    if not isinstance(name, str) or name not in _REGISTRY:
        raise BadInputError(f"unknown pooling operator {quote(name)}; available: {', '.join(sorted(_REGISTRY))}")
    if not isinstance(params, dict):
        raise BadInputError(f"parameters of {name} must be a mapping, got {type(params).__name__}")
    declared = _REGISTRY[name][2]
    out: dict[str, Any] = {}
    for key, value in params.items():
        p = declared.get(key)
        if p is None:
            valid = ", ".join(f"{k} ({v.describe()})" for k, v in declared.items() if v.kind != "file") or "none"
            raise BadInputError(f"{name} has no parameter {quote(key, 40)}; it takes: {valid}")
        if p.kind == "file" and not allow_files:
            raise BadInputError(
                f"{name}:{key} names a file; checkpoints never read other files: the manifest is "
                "corrupt or hostile, re-create the checkpoint with 'poolcli convert'"
            )
        out[key] = _check_value(name, key, p, value)
    return out


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
    """``gem:p=3,eps=1e-6`` → ("gem", {"p": 3, "eps": 1e-6});
    ``learned:pool.safetensors`` → ("learned", {"file": "pool.safetensors"})."""
    name, _, rest = text.partition(":")
    name = name.strip()
    params: dict[str, Any] = {}
    if rest:
        for part in rest.split(","):
            key, eq, val = part.partition("=")
            if not key.strip():
                raise BadInputError(
                    f"bad operator spec {quote(text, 80)}: an empty parameter; write {name}:KEY=VALUE,..."
                )
            if not eq:
                _load_builtin()
                declared = _REGISTRY[name][2] if name in _REGISTRY else {}
                if "file" in params or "file" not in declared:
                    raise BadInputError(
                        f"bad operator spec {quote(text, 80)}: {quote(part, 40)} is not KEY=VALUE; "
                        f"write {name}:{key.strip()[:40]}=VALUE"
                    )
                params["file"] = key
            else:
                params[key.strip()] = _value(val.strip())
    return name, params


def available() -> dict[str, str]:
    _load_builtin()
    return {k: h for k, (_, h, _p) in sorted(_REGISTRY.items())}


def build_op(
    name: str, params: dict[str, Any], replaced: nn.Module | None = None, allow_files: bool = True
) -> nn.Module:
    """Build operator ``name`` from ``params`` (validated against its declaration first)."""
    clean = validate_params(name, params, allow_files=allow_files)
    try:
        return _REGISTRY[name][0](clean, replaced)
    except (TypeError, ValueError, KeyError) as e:
        raise BadInputError(
            f"bad parameters for {name}: {first_sentence(e, 200)}; see 'poolcli convert --help' for "
            "the operators and their parameters"
        ) from None


def build_from_spec(text: str, replaced: nn.Module | None = None) -> nn.Module:
    name, params = parse_op_spec(text)
    return build_op(name, params, replaced)


def _load_builtin() -> None:
    from . import factories  # noqa: F401  (registers the built-in operators)
