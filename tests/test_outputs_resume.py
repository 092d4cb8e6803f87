"""Outputs (umask, symlinks, stale temporaries, byte-reproducible files) and exact resume of collect,
including kill -9 at random points (the slow test) on a job well past every internal threshold: the 1024-image
moments pass, the first pass's map cache and many checkpoint writes."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from poolcli.io.tensorfile import read_tensors, write_tensors

from .conftest import CNN, ROOT, reporting


def test_files_respect_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        write_tensors(tmp_path / "a.safetensors", {"x": torch.ones(3)}, {"k": 1})
        os.umask(0o077)
        write_tensors(tmp_path / "b.safetensors", {"x": torch.ones(3)}, {"k": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "a.safetensors").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "b.safetensors").stat().st_mode & 0o777 == 0o600


def test_symlink_is_written_through_and_stale_temps_go(tmp_path):
    target = tmp_path / "real.safetensors"
    link = tmp_path / "link.safetensors"
    write_tensors(target, {"x": torch.zeros(2)}, {})
    os.symlink(target, link)
    dead = tmp_path / ".real.safetensors.999999999.deadbeef.safetensors.tmp"  # a writer killed with -9
    alive = tmp_path / f".real.safetensors.{os.getppid()}.cafe0001.safetensors.tmp"  # a live writer's
    dead.write_bytes(b"half")
    alive.write_bytes(b"in progress")
    write_tensors(link, {"x": torch.ones(2)}, {})
    assert link.is_symlink() and torch.equal(read_tensors(target)[0]["x"], torch.ones(2))
    assert not dead.exists() and alive.exists()


def test_same_inputs_give_the_same_bytes(tmp_path, cli):
    for i in (0, 1):
        assert (
            cli("-q", "collect", CNN, "--site", "@down3", "--limit", "200", "-o", tmp_path / f"s{i}.safetensors")[0]
            == 0
        )
        assert (
            cli(
                "-q",
                "fit-pooling",
                "--stats",
                tmp_path / f"s{i}.safetensors",
                "--alpha",
                "2",
                "-o",
                tmp_path / f"p{i}.safetensors",
            )[0]
            == 0
        )
        code = cli(
            "-q",
            "convert",
            CNN,
            "--swap",
            "@down3=ppool",
            "--swap",
            "@global=gem",
            "-o",
            tmp_path / f"c{i}.safetensors",
        )[0]
        assert code == 0
        code = cli(
            "-q",
            "finetune",
            tmp_path / f"c{i}.safetensors",
            "--epochs",
            "1",
            "--limit",
            "128",
            "-o",
            tmp_path / f"f{i}.safetensors",
        )[0]
        assert code == 0
    for stem in "spcf":
        assert (tmp_path / f"{stem}0.safetensors").read_bytes() == (tmp_path / f"{stem}1.safetensors").read_bytes(), (
            stem
        )


def test_merge_reports_complete_and_missing_shards(tmp_path, cli):
    for i in (0, 1, 2):
        args = (
            "-q",
            "collect",
            CNN,
            "--site",
            "@down3",
            "--limit",
            "300",
            "--shard",
            f"{i}/3",
            "-o",
            tmp_path / f"s{i}.safetensors",
        )
        assert cli(*args)[0] == 0
    assert (
        cli(
            "-q",
            "stats",
            "merge",
            tmp_path / "s0.safetensors",
            tmp_path / "s2.safetensors",
            "-o",
            tmp_path / "m02.safetensors",
        )[0]
        == 0
    )
    meta = read_tensors(tmp_path / "m02.safetensors")[1]
    assert meta["shard"] == "partial-merge" and meta["shards"] == [0, 2]
    code, _, err = cli(
        "stats", "merge", tmp_path / "m02.safetensors", tmp_path / "s2.safetensors", "-o", tmp_path / "bad.safetensors"
    )
    assert code == 2 and "both hold shard 2/3" in err and not (tmp_path / "bad.safetensors").exists()
    assert (
        cli(
            "-q",
            "stats",
            "merge",
            tmp_path / "m02.safetensors",
            tmp_path / "s1.safetensors",
            "-o",
            tmp_path / "all.safetensors",
        )[0]
        == 0
    )
    assert read_tensors(tmp_path / "all.safetensors")[1]["shard"] == "merged"


def _collect_kwargs(ckpt):
    return dict(device=torch.device("cpu"), batch_size=64, checkpoint=ckpt, checkpoint_every=1, cache_bytes=10 * 2**20)


@pytest.mark.parametrize("stop_after", [2, 17, 22])  # inside the cached part, past 1024 images, the last but one
def test_resume_continues_where_it_stopped_bit_identical(tmp_path, stop_after):
    from poolcli.data.specs import open_dataset
    from poolcli.models.checkpoint import load_checkpoint
    from poolcli.pipeline.collect import collect_stats

    bundle = load_checkpoint(CNN)
    ds = open_dataset("digits:train", input_size=bundle.input_size, mean=bundle.mean, std=bundle.std)
    assert len(ds) == 1437  # > the 1024-image moments pass; 10 MiB of cache holds ~160 of these maps
    ckpt = tmp_path / "partial.safetensors"
    seen = []

    def die(description, n):
        if description.startswith("collect stage"):
            seen.append(n)
            if len(seen) == stop_after + 1:  # Ctrl-C after this batch: the partial is saved on the way out
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt), reporting(die):
        collect_stats(bundle, "@down3", ds, **_collect_kwargs(ckpt))
    ran = []
    with reporting(lambda description, n: ran.append(n) if description.startswith("collect stage") else None):
        resumed, _ = collect_stats(bundle, "@down3", ds, **_collect_kwargs(ckpt))
    assert ran[0] == stop_after * 64  # it started after the saved batches, not at image 0 or 1024
    clean, _ = collect_stats(bundle, "@down3", ds, device=torch.device("cpu"), batch_size=64)
    for name, t in clean.tensors().items():
        assert torch.equal(getattr(resumed, name), t), name


KILLER = """
import os, signal, sys
mode = sys.argv[1]
import poolcli.io.atomic as atomic
if mode in ("fsync", "replace"):
    count = [0]
    real = getattr(os, mode)
    def fault(*a, **k):
        count[0] += 1
        if count[0] == int(sys.argv[2]):
            os.kill(os.getpid(), signal.SIGKILL)  # during a write: temp file complete, not yet synced/renamed
        return real(*a, **k)
    setattr(os, mode, fault)
from poolcli.cli.app import main
sys.exit(main(sys.argv[3:]))
"""


@pytest.mark.slow
def test_kill_9_at_random_points_then_rerun_is_bit_identical(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "POOLCLI_COLLECT_CACHE_MB": "12", "NO_COLOR": "1"}
    args = ["-q", "collect", str(CNN), "--site", "@down3", "--data", "digits:train", "-b", "16"]
    ref = tmp_path / "ref" / "stats.safetensors"
    ref.parent.mkdir()
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "poolcli", *args, "-o", str(ref)], env=env, check=True, cwd=ROOT)
    full = time.perf_counter() - t0
    work = tmp_path / "job"
    work.mkdir()
    out = work / "stats.safetensors"
    job = [*args, "--checkpoint-every", "1", "-o", str(out)]
    rng = random.Random(0)
    kills = 0
    plan = [("fsync", 3), ("replace", 5), ("fsync", 40), ("replace", 70)]  # during writes, early and late
    attempts = 0
    while kills < 24 and attempts < 60:  # then kills anywhere: loading, moments pass, batches, writes
        mode, when = plan.pop(0) if plan else ("time", rng.uniform(0.1, 0.8) * full)
        attempts += 1
        if mode == "time":
            proc = subprocess.Popen(
                [sys.executable, "-m", "poolcli", *job],
                env=env,
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(when)
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
            proc.wait()
        else:
            proc = subprocess.run(
                [sys.executable, "-c", KILLER, mode, str(when), *job], env=env, cwd=ROOT, capture_output=True
            )
            kills += proc.returncode == -signal.SIGKILL
        if out.exists():  # a run finished before its kill: start the next job over
            out.unlink()
    assert kills >= 20
    done = subprocess.run([sys.executable, "-m", "poolcli", *job], env=env, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert out.read_bytes() == ref.read_bytes()  # bit-identical statistics (and manifest)
    assert sorted(p.name for p in work.iterdir()) == ["stats.safetensors"]  # no partial, temp or lock left


def test_sigterm_saves_the_partial_releases_the_lock_and_exits_143(tmp_path):
    """A batch scheduler's pre-emption (SIGTERM) takes Ctrl-C's path: partial kept, no lock or temp left."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NO_COLOR": "1"}
    out = tmp_path / "stats.safetensors"
    job = ["-q", "collect", str(CNN), "--site", "@down3", "--data", "digits:train", "-b", "4", "--limit", "1200"]
    job += ["--checkpoint-every", "1", "-o", str(out)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "poolcli", *job], env=env, cwd=ROOT, stderr=subprocess.PIPE, text=True
    )
    partial = tmp_path / "stats.safetensors.partial"
    deadline = time.monotonic() + 60
    while not partial.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "collect ended before it could be terminated"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: terminated (SIGTERM)"), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stats.safetensors.partial"]
    done = subprocess.run([sys.executable, "-m", "poolcli", *job], env=env, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stats.safetensors"]
