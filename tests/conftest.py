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


def _shipped_photos() -> list[Path]:
    """Real photographs that ship inside installed packages (scikit-learn, matplotlib)."""
    import matplotlib
    import sklearn

    found = [
        Path(sklearn.__file__).parent / "datasets" / "images" / "china.jpg",
        Path(sklearn.__file__).parent / "datasets" / "images" / "flower.jpg",
        Path(matplotlib.__file__).parent / "mpl-data" / "sample_data" / "grace_hopper.jpg",
    ]
    return [p for p in found if p.is_file()]


@pytest.fixture(scope="session")
def photos(tmp_path_factory) -> Path:
    """An ImageFolder with train/ and val/ splits of real photos: crops of several sizes and aspect ratios
    (565×218 as in the issue, portrait, small), a grey JPEG and an RGBA PNG."""
    from PIL import Image

    root = tmp_path_factory.mktemp("photos")
    sources = _shipped_photos()
    assert len(sources) >= 2, "the photo fixtures need scikit-learn's sample images"
    boxes = [None, (0, 0, 565, 218), (50, 20, 290, 420), (100, 100, 180, 160)]
    for split, offset in (("train", 0), ("val", 1)):
        for c, name in enumerate(("city", "garden")):
            folder = root / split / name
            folder.mkdir(parents=True)
            img = Image.open(sources[(c + offset) % len(sources)]).convert("RGB")
            for i, box in enumerate(boxes):
                part = img.crop(box) if box else img
                part.save(folder / f"{i}.jpg", quality=92)
            img.convert("L").save(folder / "grey.jpg")
            img.convert("RGBA").resize((300, 200)).save(folder / "alpha.png")
    return root


def torchrun(*args, port: int) -> subprocess.CompletedProcess:
    """``torchrun --nproc-per-node 2 -m poolcli ARGS`` on the CPU (one thread per rank), from the repo root."""
    exe = os.path.join(os.path.dirname(sys.executable), "torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NO_COLOR": "1"}
    cmd = [exe, "--nproc-per-node", "2", "--master-port", str(port), "-m", "poolcli", *map(str, args)]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
