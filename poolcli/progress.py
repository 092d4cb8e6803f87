"""Progress reporting for long steps, decoupled from how it is shown.

Pipelines call :func:`task` (``with task("collect stage3.0", total=1437, unit="images") as advance: ...
advance(64)``); whoever runs them picks the view with :func:`set_reporter`. The library default shows
nothing; the CLI installs a live bar on a terminal and periodic plain lines in logs (``poolcli.cli.common``).
Under torch.distributed only rank 0 reports, for the whole job.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Protocol

Advance = Callable[[int], None]


class Reporter(Protocol):
    def task(self, description: str, total: int | None, unit: str) -> contextlib.AbstractContextManager[Advance]: ...


class Silent:
    @contextlib.contextmanager
    def task(self, description: str, total: int | None, unit: str) -> Iterator[Advance]:
        yield lambda n=1: None


_reporter: Reporter = Silent()


def set_reporter(reporter: Reporter | None) -> Reporter:
    """Install ``reporter`` (None: silent); returns the previous one."""
    global _reporter
    previous, _reporter = _reporter, reporter or Silent()
    return previous


def rank_and_world() -> tuple[int, int]:
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
    except ImportError:
        pass
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


@contextlib.contextmanager
def task(description: str, total: int | None, unit: str = "images", scale: int = 1) -> Iterator[Advance]:
    """Report a step of ``total`` ``unit``s. ``scale``: each unit this process does stands for ``scale`` units
    of the whole job (ranks of a torchrun job share the work evenly; rank 0 reports for all of them)."""
    rank, _ = rank_and_world()
    if rank != 0:
        yield lambda n=1: None
        return
    with _reporter.task(description, total, unit) as advance:
        yield (lambda n=1: advance(n * scale)) if scale != 1 else advance


def note(text: str) -> None:
    """A short status for the innermost running step (e.g. the running loss), where the reporter shows one."""
    show = getattr(_reporter, "note", None)
    if show is not None and rank_and_world()[0] == 0:
        show(text)
