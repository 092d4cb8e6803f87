"""Untrusted text made safe to show: control characters escaped, one line, bounded length.

Names in messages come from users and from files others made (manifests, folder names, class names).
They are shown literally: never interpreted as terminal escapes or rich markup, never longer than a line.
"""

from __future__ import annotations

import re
import unicodedata

LINE_LIMIT = 1000  # characters of one message line
VALUE_LIMIT = 120  # characters of one quoted value inside a message

_NEWLINES = re.compile(r"[\r\n\u2028\u2029]+")


def _escape(ch: str) -> str:
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def literal(text: object, limit: int = LINE_LIMIT) -> str:
    """``text`` as one printable line: line breaks become spaces, other control and format characters
    (ESC, BEL, bidi overrides, ...) are shown escaped (``\\x1b``), and anything past ``limit`` characters is
    cut with a note of how much was cut."""
    s = _NEWLINES.sub(" ", str(text))
    if any(unicodedata.category(c) in ("Cc", "Cf") for c in s):
        s = "".join(_escape(c) if unicodedata.category(c) in ("Cc", "Cf") and c != "\t" else c for c in s)
        s = s.replace("\t", " ")
    if len(s) > limit:
        cut = len(s) - limit
        s = f"{s[:limit]}… ({cut} more characters)"
    return s


def quote(value: object, limit: int = VALUE_LIMIT) -> str:
    """A user- or file-supplied value for a message: literal, single-quoted, at most ``limit`` characters."""
    s = literal(value, limit=10 * limit)
    if len(s) > limit:
        s = s[: limit - 1] + "…"
    return f"'{s}'"


def first_sentence(err: BaseException | str, limit: int = 300) -> str:
    """The first line of a library's message, cut at a word boundary (never mid-word) when longer than
    ``limit``, for quoting inside one of our messages."""
    text = str(err).strip()
    line = text.splitlines()[0].strip() if text else (type(err).__name__ if isinstance(err, BaseException) else "")
    line = literal(line, limit=10 * limit)
    if len(line) <= limit:
        return line
    cut = line.rfind(" ", 0, limit)
    return line[: cut if cut > limit // 2 else limit].rstrip(" ,;:") + " …"
