"""collect / stats merge / fit-pooling end to end on the fixture CNN."""

from __future__ import annotations

import json
import os
import shutil
import sys

import pytest
import torch

from poolcli.data.specs import open_dataset
from poolcli.io.tensorfile import read_tensors
from poolcli.models.checkpoint import load_checkpoint
from poolcli.pipeline.collect import collect_stats, load_stats
from poolcli.pipeline.poolfile import load_pooling_module

from .conftest import CNN, reporting, torchrun

COMMON = ["--site", "@down3", "--data", "digits:train", "--limit", "120", "--batch-size", "16", "--device", "cpu"]


def _same(a, b, rtol=1e-12):
    """Equal statistics, up to ``rtol`` relative to each tensor's largest entry: other batch boundaries
    round differently (mixed precision: each batch's Gram in float32, ~1e-7)."""
    sa, _ = load_stats(a)
    sb, _ = load_stats(b)
    assert torch.equal(sa.counts, sb.counts)
    for name in ("gram", "class_sums"):
        x, y = getattr(sa, name), getattr(sb, name)
        assert float((x - y).abs().max()) <= rtol * float(x.abs().max()), name


def test_collect_file_and_shards(tmp_path, cli):
    whole = tmp_path / "whole.safetensors"
    code, out, err = cli("collect", CNN, *COMMON, "-o", whole, "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["site"] == "stage3.0" and doc["grid"] == [8, 8] and doc["channels"] == 256 and doc["images"] == 120
    tensors, meta = read_tensors(whole)
    assert tensors["gram"].dtype == torch.float64 and tensors["gram"].shape == (64, 64)
    assert tensors["class_sums"].shape == (10, 64, 256)
    for i in range(2):
        assert cli("collect", CNN, *COMMON, "--shard", f"{i}/2", "-o", tmp_path / f"s{i}.safetensors")[0] == 0
    merged = tmp_path / "merged.safetensors"
    assert cli("stats", "merge", tmp_path / "s0.safetensors", tmp_path / "s1.safetensors", "-o", merged)[0] == 0
    _same(whole, merged, rtol=1e-6)  # mixed precision: the shards' batches are other images
    exact = [tmp_path / f"{name}.safetensors" for name in ("w64", "a64", "b64", "m64")]
    assert cli("collect", CNN, *COMMON, "--precision", "float64", "-o", exact[0])[0] == 0
    for i in range(2):
        args = ("--shard", f"{i}/2", "--precision", "float64", "-o", exact[1 + i])
        assert cli("collect", CNN, *COMMON, *args)[0] == 0
    assert cli("stats", "merge", exact[1], exact[2], "-o", exact[3])[0] == 0
    _same(exact[0], exact[3])
    _same(whole, exact[0], rtol=1e-6)
    code, _, err = cli("fit-pooling", "--stats", tmp_path / "s0.safetensors")
    assert code == 2 and "merge all shards" in err


def test_resume_after_kill_gives_identical_statistics(tmp_path):
    bundle = load_checkpoint(CNN)
    ds = open_dataset("digits:train", input_size=bundle.input_size, mean=bundle.mean, std=bundle.std, limit=96)
    ckpt = tmp_path / "partial.safetensors"
    kw = dict(device=torch.device("cpu"), batch_size=16, checkpoint=ckpt, checkpoint_every=1)
    seen = []

    def die(description, n):
        if description.startswith("collect stage"):
            seen.append(n)
            if len(seen) == 3:
                raise KeyboardInterrupt  # killed mid-run, after 3 checkpoints

    with pytest.raises(KeyboardInterrupt), reporting(die):
        collect_stats(bundle, "@down3", ds, **kw)
    assert ckpt.exists()
    resumed, _ = collect_stats(bundle, "@down3", ds, **kw)
    clean, _ = collect_stats(bundle, "@down3", ds, device=torch.device("cpu"), batch_size=16)
    assert torch.equal(resumed.counts, clean.counts)
    assert torch.equal(resumed.gram, clean.gram) and torch.equal(resumed.class_sums, clean.class_sums)


def test_fit_pooling_end_to_end(tmp_path, cli):
    stats = tmp_path / "stats.safetensors"
    assert cli("collect", CNN, *COMMON, "-o", stats)[0] == 0
    code, out, err = cli(
        "fit-pooling",
        "--stats",
        stats,
        "--alpha",
        "1",
        "-o",
        tmp_path / "pool.safetensors",
        "--plot",
        tmp_path / "maps.png",
        "--json",
    )
    assert code == 0, err
    doc = json.loads(out)
    fit = doc["fits"][0]
    assert (
        fit["out_grid"] == [4, 4] and fit["separability_gain"] > 1.0 and (tmp_path / "maps.png").stat().st_size > 1000
    )
    pool, meta = load_pooling_module(tmp_path / "pool.safetensors")
    y = pool(torch.rand(2, 256, 8, 8))
    assert y.shape == (2, 512, 4, 4)  # k=2 doubles the channels like the stride-2 conv it can replace
    code, out2, _ = cli("fit-pooling", CNN, *COMMON, "--alpha", "1", "--json")  # collect + fit in one step
    assert code == 0 and json.loads(out2)["fits"][0]["separability_mean"] == pytest.approx(
        fit["separability_mean"], rel=1e-9
    )


def test_fit_errors(tmp_path, cli):
    code, _, err = cli("fit-pooling", CNN, "--site", "@down7", "--limit", "20")
    assert code == 2 and "@down7" in err
    code, _, err = cli("fit-pooling", CNN, "--site", "@down3", "--limit", "11", "--max-per-class", "1")
    assert code == 2 and "only 1 image" in err
    code, _, err = cli("fit-pooling", "--stats", CNN)
    assert code == 2 and "not a poolcli statistics file" in err
    code, _, err = cli("fit-pooling")
    assert code == 2 and "--stats" in err
    code, _, err = cli("collect", CNN, "--site", "global_pool", "--at", "destrided", "-o", tmp_path / "x.safetensors")
    assert code == 2 and "strided conv" in err and not (tmp_path / "x.safetensors").exists()


@pytest.mark.skipif(
    shutil.which("torchrun") is None and not os.path.exists(os.path.join(os.path.dirname(sys.executable), "torchrun")),
    reason="torchrun not installed",
)
def test_torchrun_two_ranks_equal_one_run(tmp_path, cli):
    single = tmp_path / "one.safetensors"
    assert cli("collect", CNN, *COMMON, "-o", single)[0] == 0
    out = tmp_path / "ddp.safetensors"
    proc = torchrun("collect", CNN, *COMMON, "-o", out, port=29517)
    assert proc.returncode == 0, proc.stderr[-2000:]
    _same(single, out, rtol=1e-6)  # other batch boundaries: mixed precision rounds differently
