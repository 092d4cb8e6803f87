from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
CNN = ROOT / "fixtures" / "digits-cnn.safetensors"
RESNET = ROOT / "fixtures" / "digits-resnet.safetensors"

torch.set_num_threads(1)  # tests run 2 workers on 2 cores


@pytest.fixture
def cli(capsys):
    """Run poolcli in-process; returns (exit code, stdout, stderr)."""
    from poolcli.cli import common
    from poolcli.cli.app import main

    def run(*args: str) -> tuple[int, str, str]:
        common.STATE.update(quiet=False, debug=False)
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def run_subprocess(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "NO_COLOR": "1", "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "poolcli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        input=stdin,
        timeout=300,
    )


class Reporting:
    """A progress reporter for tests: ``callback(description, n)`` on every advance of a pipeline step."""

    def __init__(self, callback):
        self.callback = callback

    @contextlib.contextmanager
    def task(self, description, total, unit):
        yield lambda n=1: self.callback(description, n)


@contextlib.contextmanager
def reporting(callback):
    from poolcli import progress

    previous = progress.set_reporter(Reporting(callback))
    try:
        yield
    finally:
        progress.set_reporter(previous)
