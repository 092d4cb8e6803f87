"""Small typed checks for JSON documents read from files (manifests are untrusted input).

Each check names the field by its path (``base.kwargs.num_classes``), says what it must be, and raises one
:class:`BadInputError` whose fix is the caller's ``fix`` (e.g. "re-create the checkpoint"). Written here rather
than with a JSON-Schema library because the rules are few, cross-field (``mean`` has one entry per input
channel) and must end in our one-line messages.
"""

from __future__ import annotations

import math
import re
from typing import Any

from ..errors import BadInputError
from ..text import quote

NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,200}$")


class Schema:
    """Checks for one document: ``Schema("checkpoint x.safetensors", fix="re-create it")``."""

    def __init__(self, what: str, fix: str):
        self.what, self.fix = what, fix

    def fail(self, field: str, must: str, got: Any = None, show: bool = True) -> BadInputError:
        shown = f", got {quote(got, 60)}" if show else ""
        return BadInputError(f"{self.what}: manifest field {field} must be {must}{shown}; {self.fix}")

    def mapping(self, v: Any, field: str) -> dict:
        if not isinstance(v, dict):
            raise self.fail(field, "a mapping", type(v).__name__)
        return v

    def only(self, v: dict, field: str, allowed: set[str] | dict) -> None:
        unknown = sorted(k for k in v if k not in allowed)
        if unknown:
            raise self.fail(f"{field}.{unknown[0]}", f"absent (known fields: {', '.join(sorted(allowed))})", show=False)

    def seq(self, v: Any, field: str, length: int | None = None, most: int = 100000) -> list:
        if not isinstance(v, list):
            raise self.fail(field, "a list", type(v).__name__)
        if length is not None and len(v) != length:
            raise self.fail(field, f"a list of {length} entries", f"{len(v)} entries")
        if len(v) > most:
            raise self.fail(field, f"a list of at most {most} entries", f"{len(v)} entries")
        return v

    def integer(self, v: Any, field: str, low: int, high: int) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high:
            raise self.fail(field, f"an integer from {low} to {high}", v)
        return v

    def number(self, v: Any, field: str, positive: bool = False) -> float:
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and (v > 0 or not positive)
        if not ok:
            raise self.fail(field, "a finite number" + (" > 0" if positive else ""), v)
        return float(v)

    def flag(self, v: Any, field: str) -> bool:
        if not isinstance(v, bool):
            raise self.fail(field, "true or false", v)
        return v

    def text(
        self, v: Any, field: str, most: int = 500, pattern: re.Pattern | None = None, choices: tuple[str, ...] = ()
    ) -> str:
        if not isinstance(v, str) or not v or len(v) > most:
            raise self.fail(field, f"a non-empty text of at most {most} characters", v)
        if choices and v not in choices:
            raise self.fail(field, f"one of {', '.join(choices)}", v)
        if pattern is not None and not pattern.match(v):
            raise self.fail(field, "a name of letters, digits, '_', '.' and '-'", v)
        return v

    def size(self, v: Any, field: str, low: int, high: int) -> Any:
        """An int, or a list of two ints, each in [low, high]."""
        if isinstance(v, list):
            self.seq(v, field, 2)
            return [self.integer(x, f"{field}[{i}]", low, high) for i, x in enumerate(v)]
        return self.integer(v, field, low, high)

    def ints(self, v: Any, field: str, length: int, low: int, high: int) -> list[int]:
        self.seq(v, field, length)
        return [self.integer(x, f"{field}[{i}]", low, high) for i, x in enumerate(v)]

    def texts(self, v: Any, field: str, most: int = 100000, each: int = 500) -> list[str]:
        self.seq(v, field, most=most)
        return [self.text(x, f"{field}[{i}]", most=each) for i, x in enumerate(v)]
