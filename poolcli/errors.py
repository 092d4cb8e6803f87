"""Error types that the CLI turns into one-line messages and exit codes.

Library code raises these; only the CLI layer decides how they are shown.
Exit codes: 0 ok, 1 failure while running, 2 bad usage or bad input, 130 interrupted.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143  # 128 + SIGTERM, as a shell reports it


class PoolcliError(Exception):
    """A failure a user can act on. ``str(err)`` is the one-line message (problem + fix)."""

    exit_code = EXIT_FAILURE


class BadInputError(PoolcliError):
    """Bad usage or bad input: unreadable file, unknown site/model, shape mismatch, ..."""

    exit_code = EXIT_BAD_INPUT


class RunError(PoolcliError):
    """A failure while running on valid input (numerical breakdown, out of memory, ...)."""

    exit_code = EXIT_FAILURE
