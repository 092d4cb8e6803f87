"""The poolcli command line: a thin typer layer over the library.

``main()`` turns every failure into a one-line message and an exit code (0 ok, 1 failure while
running, 2 bad usage or input, 130 interrupted); ``--debug`` (anywhere on the line, or
POOLCLI_DEBUG=1) shows the traceback instead.
"""
from __future__ import annotations

import os
import sys
import traceback

import typer

from ..errors import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, PoolcliError
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
    from ..ops.native import native_status

    kernels = ", ".join(f"{name}: {how}" for name, how in native_status().items())
    print(f"poolcli {__version__} (torch {torch.__version__}; kernels: {kernels})")
    raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and which kernels are native, then exit."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or human tables on stderr."),
    debug: bool = typer.Option(False, "--debug", help="Show Python tracebacks on errors."),
) -> None:
    common.STATE["quiet"] = common.STATE["quiet"] or quiet
    common.STATE["debug"] = common.STATE["debug"] or debug


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
    common.STATE["debug"] = "--debug" in argv or os.environ.get("POOLCLI_DEBUG", "") not in ("", "0")
    common.STATE["quiet"] = "--quiet" in argv or "-q" in argv[:1]
    argv = [a for a in argv if a != "--debug"]
    _register()
    command = typer.main.get_command(app)
    ce = _click_exceptions()
    exit_types = (typer.Exit,) + tuple(getattr(m, "Exit") for m in ce if hasattr(m, "Exit"))
    click_errors = tuple(m.ClickException for m in ce)
    abort_types = (typer.Abort, KeyboardInterrupt) + tuple(getattr(m, "Abort") for m in ce if hasattr(m, "Abort"))
    try:
        rv = command.main(args=argv, prog_name="poolcli", standalone_mode=False)
        if rv == EXIT_INTERRUPTED:  # typer turns Ctrl-C into a returned 130
            common.console().print("interrupted")
        return rv if isinstance(rv, int) else EXIT_OK
    except exit_types as e:
        if e.exit_code == EXIT_INTERRUPTED:  # click turns Ctrl-C into Exit(130) in some versions
            common.console().print("interrupted")
        return e.exit_code
    except click_errors as e:
        e.show()
        return e.exit_code
    except abort_types:
        common.console().print("interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        sys.stdout = open(os.devnull, "w")  # the reader went away (e.g. `| head`); not an error
        return EXIT_OK
    except PoolcliError as e:
        if common.STATE["debug"]:
            traceback.print_exc()
        common.console().print(f"[red]error:[/red] {e}", soft_wrap=True)
        return e.exit_code
    except Exception as e:  # noqa: BLE001 - the last line of defence: one line, exit 1
        if common.STATE["debug"]:
            traceback.print_exc()
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        common.console().print(f"[red]error:[/red] {type(e).__name__}: {msg} (rerun with --debug for the traceback)", soft_wrap=True)
        return EXIT_FAILURE


def run() -> None:
    sys.exit(main())
