"""The poolcli command line: a thin typer layer over the library.

``main()`` turns every failure into a one-line message and an exit code (0 ok, 1 failure while
running, 2 bad usage or input, 130 interrupted); ``--debug`` (anywhere on the line, or
POOLCLI_DEBUG=1) shows the traceback instead.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import traceback
import warnings

import typer

from ..errors import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, EXIT_TERMINATED, PoolcliError
from ..text import first_sentence
from . import common

app = typer.Typer(
    name="poolcli",
    help="Find, fit, swap and evaluate pooling in pretrained CNNs.\n\n"
    "Example: poolcli inspect fixtures/digits-cnn.safetensors",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if not value:
        return
    import torch

    from .. import __version__
    from ..ops import ppool_triton
    from ..ops.native import native_status

    kernels = ", ".join(f"{name}: {how}" for name, how in native_status().items())
    cuda = f"triton {ppool_triton.triton.__version__}" if ppool_triton.triton is not None else "torch ops (no triton)"
    print(f"poolcli {__version__} (torch {torch.__version__}; kernels: {kernels}; ppool on CUDA: {cuda})")
    raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False,
        "--version",
        callback=_version,
        is_eager=True,
        help="Print the version and which kernels are native, then exit.",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or human tables on stderr."),
    debug: bool = typer.Option(False, "--debug", help="Show Python tracebacks on errors."),
) -> None:
    common.STATE["quiet"] = common.STATE["quiet"] or quiet
    common.STATE["debug"] = common.STATE["debug"] or debug
    common.install_reporter()


def _register() -> None:
    from . import collect_cmd, convert_cmd, evaluate_cmd, finetune_cmd, fit_cmd, inspect_cmd  # noqa: F401  (each module adds its command to `app`)


def _click_exceptions() -> list:
    """Typer ≥ 0.20 vendors click as ``typer._click``; older ones use click itself. Accept both."""
    mods = []
    for name in ("typer._click.exceptions", "click.exceptions"):
        try:
            mods.append(__import__(name, fromlist=["ClickException"]))
        except ImportError:
            pass
    return mods


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    head = argv[: argv.index("--")] if "--" in argv else argv
    common.STATE["debug"] = "--debug" in head or os.environ.get("POOLCLI_DEBUG", "") not in ("", "0")
    common.STATE["quiet"] = "--quiet" in head or "-q" in head
    # global flags may come anywhere (`poolcli collect ... -q`): taken out here, they are not subcommand options
    argv = [a for a in head if a not in ("--debug", "--quiet", "-q")] + argv[len(head) :]
    _register()
    command = typer.main.get_command(app)
    _tidy_help(command)
    ce = _click_exceptions()
    exit_types = (typer.Exit,) + tuple(m.Exit for m in ce if hasattr(m, "Exit"))
    click_errors = tuple(m.ClickException for m in ce)
    abort_types = (typer.Abort, KeyboardInterrupt) + tuple(m.Abort for m in ce if hasattr(m, "Abort"))
    shown = warnings.showwarning
    warnings.showwarning = _one_line_warning
    terminated, previous = _raise_on_sigterm()
    try:
        rv = command.main(args=argv, prog_name="poolcli", standalone_mode=False)
        if rv == EXIT_INTERRUPTED:  # typer turns Ctrl-C into a returned 130
            return _interrupted(terminated)
        return rv if isinstance(rv, int) else EXIT_OK
    except exit_types as e:
        if e.exit_code == EXIT_INTERRUPTED:  # click turns Ctrl-C into Exit(130) in some versions
            return _interrupted(terminated)
        return e.exit_code
    except click_errors as e:
        message = _usage_message(e)
        if message is not None:
            common.error_line(message)
        return e.exit_code
    except abort_types:
        return _interrupted(terminated)
    except BrokenPipeError:
        sys.stdout = open(os.devnull, "w")  # the reader went away (e.g. `| head`); not an error
        return EXIT_OK
    except PoolcliError as e:
        if common.STATE["debug"]:
            traceback.print_exc()
        common.error_line(_own_message(e))
        return e.exit_code
    except Exception as e:  # noqa: BLE001 - the last line of defence: one line, exit 1
        if common.STATE["debug"]:
            traceback.print_exc()
        common.error_line(f"{type(e).__name__}: {first_sentence(e)} (rerun with --debug for the traceback)")
        return EXIT_FAILURE
    finally:
        warnings.showwarning = shown
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _tidy_help(command: object) -> None:
    """Flags show no value placeholder (typer's rich help would print ``<bool>``)."""
    for param in getattr(command, "params", []):
        if getattr(param, "is_flag", False) and getattr(param, "metavar", None) is None:
            param.metavar = ""
    made = getattr(command, "get_help_option", None)
    if made is not None:  # click builds --help on demand: tidy it as it is made

        def get_help_option(ctx: object, made=made) -> object:
            option = made(ctx)
            if option is not None:
                option.metavar = ""
            return option

        command.get_help_option = get_help_option  # type: ignore[attr-defined]
    for sub in (getattr(command, "commands", None) or {}).values():
        _tidy_help(sub)


def _usage_message(e: Exception) -> str | None:
    """click's usage error (3 lines: usage, hint, error) as one line: the error and where help is. None when
    click has already shown the help (``poolcli`` with no command)."""
    text = e.format_message().strip()
    if not text:
        return None
    ctx = getattr(e, "ctx", None)
    path = getattr(ctx, "command_path", None) if ctx is not None else None
    return f"{text} (see '{path or 'poolcli'} --help')"


def _raise_on_sigterm() -> tuple[list[bool], object]:
    """SIGTERM (``kill``, a batch scheduler's pre-emption) takes Ctrl-C's path: locks are released, temporary
    files removed, collect saves its partial. Returns a flag that is set when it came, and the handler before."""
    came: list[bool] = []
    if threading.current_thread() is not threading.main_thread():
        return came, None

    def handler(signum: int, frame: object) -> None:
        came.append(True)
        raise KeyboardInterrupt

    return came, signal.signal(signal.SIGTERM, handler)


def _interrupted(terminated: list[bool]) -> int:
    what = "terminated (SIGTERM)" if terminated else "interrupted"
    common.error_line(
        f"{what}; outputs were left as they were (collect --checkpoint-every keeps its partial; finetune keeps "
        "OUT.last.safetensors for --resume)"
    )
    return EXIT_TERMINATED if terminated else EXIT_INTERRUPTED


def _own_message(e: PoolcliError) -> str:
    """Our message. An error raised in a DataLoader worker comes back as the same type whose text is the
    worker's traceback: its last line holds the message."""
    text = str(e)
    if "Original Traceback" in text:
        last = [line for line in text.strip().splitlines() if line.strip()][-1]
        return last.split(": ", 1)[1] if last.startswith(("poolcli.", type(e).__name__)) and ": " in last else last
    return text


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    """Library warnings as one line each (``warning: ...``), never a source excerpt."""
    common.warn(first_sentence(str(message)))


def run() -> None:
    sys.exit(main())
