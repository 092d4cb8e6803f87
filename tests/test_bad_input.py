"""A bad-input corpus across every command: each case must give exit 2 (bad input/usage) or 1 (a failure while
running), exactly one line on stderr (``error: ...``) naming the problem, no traceback, nothing on stdout, nothing
left in the output folder, and the previous output there byte-for-byte untouched."""

from __future__ import annotations

import json
import os
import pickle
import shutil

import pytest
import torch

from poolcli.io.tensorfile import read_tensors, serialize, write_tensors

from .conftest import CNN

PREVIOUS = b"previous output: must stay untouched"


def _raw_write(path, tensors, manifest):
    """A safetensors file with any manifest and any numbers (what a hostile or broken tool could make)."""
    head, order = serialize(tensors, {"poolcli": json.dumps(manifest), "format": "pt"})
    with open(path, "wb") as f:
        f.write(head)
        for t in order:
            f.write(t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())


def _manifest_variant(h, name, mutate):
    tensors, manifest = read_tensors(CNN)
    mutate(manifest)
    _raw_write(h / f"{name}.safetensors", tensors, manifest)


def _swap(**rec):
    return lambda m: m["swaps"].append({"site": "stage3.0", "mode": "replace", **rec})


MANIFESTS = {
    "m-learned-file": _swap(op="learned", params={"file": "/etc/passwd"}),
    "m-width-huge": lambda m: m["base"]["kwargs"].update(width=1000000),
    "m-width-float": lambda m: m["base"]["kwargs"].update(width=1e6),
    "m-checkpoint-path": lambda m: m["base"]["kwargs"].update(checkpoint_path="/etc/passwd"),
    "m-base-string": lambda m: m.update(base="timm:resnet18"),
    "m-swaps-int": lambda m: m.update(swaps=3),
    "m-size-negative": lambda m: m.update(input_size=[1, -8, 8]),
    "m-mean-length": lambda m: m.update(mean=[0.5, 0.5]),
    "m-std-zero": lambda m: m.update(std=[0.0]),
    "m-mean-nan": lambda m: m.update(mean=[float("nan")]),
    "m-name-markup": lambda m: m["base"].update(name="x[/bogus]y"),
    "m-name-escape": lambda m: m["base"].update(name="a\x1b[31mb"),
    "m-name-huge": lambda m: m["base"].update(name="a" * 2_000_000),
    "m-op-nan": _swap(op="gem", params={"p": float("nan")}),
    "m-op-unknown": _swap(op="evil", params={}),
    "m-op-params-list": _swap(op="gem", params=[1, 2]),
    "m-site-unknown": lambda m: m["swaps"].append({"site": "nope.x", "op": "max", "params": {}, "mode": "replace"}),
    "m-mode-unknown": _swap(op="max", params={}, mode="explode"),
    "m-swap-not-dict": lambda m: m["swaps"].append("stage3.0"),
    "m-version-text": lambda m: m.update(version="1"),
    "m-version-newer": lambda m: m.update(version=99),
    "m-classes-ints": lambda m: m.update(classes=[1, 2]),
    "m-unknown-field": lambda m: m.update(run="rm -rf /"),
    "m-source-unknown": lambda m: m["base"].update(source="evil"),
    "m-num-classes-negative": lambda m: m["base"]["kwargs"].update(num_classes=-1),
    "m-pad-bad": _swap(op="max", params={"kernel": 2, "stride": 2}, pad={"kind": "ceil", "kernel": [2]}),
    "m-classes-count": lambda m: m.update(classes=["a", "b", "c"]),
}

STATS_VARIANTS = {  # statistics manifests that a broken or hostile tool could write
    "stats-images-negative": lambda m: m.update(images=-1),
    "stats-unknown-field": lambda m: m.update(evil="x"),
    "stats-site-escape": lambda m: m.update(site="stage3.0\x1b[31m"),
    "stats-shards-out-of-range": lambda m: m.update(shards=[5], shard_count=2),
    "stats-at-unknown": lambda m: m.update(at="sideways"),
    "stats-precision-unknown": lambda m: m.update(precision="fp8"),
}


@pytest.fixture(scope="module")
def h(tmp_path_factory):
    """Hostile and broken files, made once per test module."""
    from poolcli.api import collect
    from poolcli.learn.stats import ScatterStats
    from poolcli.models.checkpoint import save_checkpoint
    from poolcli.models.spec import build_model
    from poolcli.pipeline.collect import save_stats

    h = tmp_path_factory.mktemp("hostile")
    for name, mutate in MANIFESTS.items():
        _manifest_variant(h, name, mutate)
    good = CNN.read_bytes()
    (h / "truncated.safetensors").write_bytes(good[: len(good) // 2])
    (h / "garbage.safetensors").write_bytes(os.urandom(4096))
    (h / "plain.safetensors").write_bytes(b"")
    _raw_write(h / "nomanifest.safetensors", {"w": torch.ones(2)}, {})
    (h / "model_dir").mkdir()
    os.mkfifo(h / "fifo.safetensors")

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch /tmp/poolcli-pwned",))

    (h / "evil.pt").write_bytes(pickle.dumps({"state_dict": Evil()}))
    # NaN weights (written around the finite check, as a broken tool would)
    tensors, manifest = read_tensors(CNN)
    _raw_write(
        h / "nan-weights.safetensors",
        {k: v.float() * float("nan") if v.is_floating_point() else v for k, v in tensors.items()},
        manifest,
    )
    rgb = build_model("poolcli:convnet4", in_chans=3, num_classes=10)
    save_checkpoint(rgb, None, h / "rgb.safetensors")
    # datasets
    n = 40
    labels = torch.arange(n) % 4
    img = torch.rand(n, 1, 8, 8)
    write_tensors(h / "ok.safetensors", {"images": img, "labels": labels}, {})
    _raw_write(h / "nan-images.safetensors", {"images": img.clone().fill_(float("nan")), "labels": labels}, {})
    write_tensors(h / "huge-images.safetensors", {"images": img * 3e38, "labels": labels}, {})
    write_tensors(h / "float-labels.safetensors", {"images": img, "labels": labels.float() + 0.5}, {})
    write_tensors(h / "negative-labels.safetensors", {"images": img, "labels": labels - 2}, {})
    write_tensors(h / "int-images-1000.safetensors", {"images": (img * 1000).long(), "labels": labels}, {})
    write_tensors(h / "two-channel.safetensors", {"images": torch.rand(n, 2, 8, 8), "labels": labels}, {})
    write_tensors(h / "no-labels.safetensors", {"images": img}, {})
    write_tensors(h / "length-mismatch.safetensors", {"images": img, "labels": labels[:10]}, {})
    write_tensors(h / "labels-20.safetensors", {"images": img, "labels": labels * 5}, {})
    write_tensors(
        h / "empty.safetensors",
        {"images": torch.zeros(0, 1, 8, 8, dtype=torch.uint8), "labels": torch.zeros(0, dtype=torch.long)},
        {},
    )
    write_tensors(h / "one-class.safetensors", {"images": img, "labels": torch.zeros(n, dtype=torch.long)}, {})
    cifar = h / "cifar" / "cifar-10-batches-py"
    cifar.mkdir(parents=True)
    for f in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (cifar / f).write_bytes(pickle.dumps({"labels": [1, 2]}))  # no 'data'
    (cifar / "batches.meta").write_bytes(pickle.dumps({"label_names": ["a", "b", "c"]}))
    evil_cifar = h / "evilcifar" / "cifar-10-batches-py"
    evil_cifar.mkdir(parents=True)
    for f in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]:
        (evil_cifar / f).write_bytes(pickle.dumps(Evil()))
    (h / "svhn").mkdir()
    folder = h / "photos"
    for c in ("cat", "dog"):
        (folder / c).mkdir(parents=True)
        for i in range(3):
            from PIL import Image

            Image.new("RGB", (12, 10), (i * 40, 10, 200)).save(folder / c / f"{i}.png")
    (folder / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    # statistics: a good one (with a run key), a NaN one, a one-class one, one of another site
    stats, meta = collect(str(CNN), "@down3", "digits:train", limit=120, device="cpu", batch_size=64)
    save_stats(h / "stats.safetensors", stats, meta)
    other, ometa = collect(str(CNN), "@down2", "digits:train", limit=120, device="cpu", batch_size=64)
    save_stats(h / "stats-down2.safetensors", other, ometa)
    t = stats.tensors()
    _raw_write(h / "stats-nan.safetensors", {**t, "gram": t["gram"] * float("nan")}, meta)
    _raw_write(h / "stats-extra-tensor.safetensors", {**t, "evil": torch.zeros(3)}, meta)
    _raw_write(h / "stats-centre-shape.safetensors", {**t, "centre": t["centre"][:, :5].contiguous()}, meta)
    one = ScatterStats.empty(torch.tensor([5]), stats.grid, stats.channel_mean, stats.channel_scale)
    one.update(torch.randn(5, len(stats.channel_scale), *stats.grid), torch.zeros(5, dtype=torch.long))
    save_stats(h / "stats-one-class.safetensors", one, {**meta, "classes": ["0"]})
    for name, mutate in STATS_VARIANTS.items():
        m = json.loads(json.dumps(meta))
        mutate(m)
        _raw_write(h / f"{name}.safetensors", t, m)
    (h / "junk.pt").write_text("hello world")
    # robustness: baselines and published arrays that are broken in one way each
    (h / "baseline-bad.json").write_text('{"corruptions": {"gausian_noise": 0.5}}')
    (h / "baseline-junk.json").write_text("not json at all")
    (h / "baseline-flips.json").write_text('{"corruptions": {"gaussian_noise": 0.5}, "flip_probability": [1, 2]}')
    (h / "baseline-deep.json").write_text("[" * 100000)
    (h / "baseline-bigint.json").write_text('{"corruptions": {"contrast": ' + "9" * 5001 + "}}")
    import numpy as np

    for name, labels, arr in (
        ("c10c-float", np.zeros(10, np.uint8), np.zeros((10, 8, 8, 3), np.float32)),
        ("c10c-count", np.zeros(10, np.uint8), np.zeros((15, 8, 8, 3), np.uint8)),
        ("c10c-tiling", np.arange(10, dtype=np.uint8), np.zeros((10, 8, 8, 3), np.uint8)),
        ("c10c-good", np.zeros(10, np.uint8), np.zeros((10, 8, 8, 3), np.uint8)),
    ):
        (h / name).mkdir()
        np.save(h / name / "labels.npy", labels)
        np.save(h / name / "contrast.npy", arr)
    (h / "c10c-biglabel").mkdir()
    np.save(h / "c10c-biglabel" / "labels.npy", np.full(10, 2**40, np.uint64))
    np.save(h / "c10c-biglabel" / "contrast.npy", np.zeros((10, 8, 8, 3), np.uint8))
    (h / "c10c-fifo").mkdir()
    np.save(h / "c10c-fifo" / "labels.npy", np.zeros(10, np.uint8))
    os.mkfifo(h / "c10c-fifo" / "contrast.npy")
    (h / "c10c-empty").mkdir()
    np.save(h / "c10c-empty" / "labels.npy", np.zeros(10, np.uint8))
    (h / "c10p-one-frame").mkdir()
    np.save(h / "c10p-one-frame" / "translate.npy", np.zeros((4, 1, 8, 8, 3), np.uint8))
    (h / "truncated-pickle.pt").write_bytes(b"\x80\x02}q\x00(X")
    pool = h / "pool.safetensors"
    from poolcli.cli.app import main

    assert main(["-q", "fit-pooling", "--stats", str(h / "stats.safetensors"), "--alpha", "1", "-o", str(pool)]) == 0
    wide = ["-q", "fit-pooling", "--stats", str(h / "stats.safetensors"), "--stride", "4"]
    assert main([*wide, "--alpha", "1", "-o", str(h / "pool-stride4.safetensors")]) == 0
    return h


def _partial_of_another_job(h, out):
    """OUT.partial left by a run with another --seed (a different random subset), stopped in its main pass."""
    import contextlib

    from poolcli import api, progress

    class StopInMainPass:
        @contextlib.contextmanager
        def task(self, description, total, unit):
            seen = []

            def advance(n=1):
                seen.append(n)
                if description.startswith("collect stage") and len(seen) == 3:
                    raise KeyboardInterrupt

            yield advance

    previous = progress.set_reporter(StopInMainPass())
    try:
        with pytest.raises(KeyboardInterrupt):
            api.collect(
                str(CNN),
                "@down3",
                "digits:train",
                limit=300,
                seed=1,
                device="cpu",
                batch_size=16,
                checkpoint=out / "prev.safetensors.partial",
                checkpoint_every=1,
            )
    finally:
        progress.set_reporter(previous)
    assert (out / "prev.safetensors.partial").exists()


C = str(CNN)
CV = ["convert", C, "-o", "{O}/prev.safetensors", "--swap"]
FIT = ["fit-pooling", "--stats", "{H}/stats.safetensors"]
COL = ["collect", C, "--site", "@down3", "-o", "{O}/prev.safetensors"]
FT = ["finetune", C, "--epochs", "1", "--limit", "64", "-o", "{O}/prev.safetensors"]
EV = ["evaluate", C, "--data"]
RB = ["--metrics", "robustness", "--max-per-class", "1"]

# (id, argv, exit code, a fragment the one line must contain)
CASES = [
    # --- models and checkpoints
    ("missing-model", ["inspect", "{H}/nope.safetensors"], 2, "file not found"),
    ("model-is-folder", ["inspect", "{H}/model_dir"], 2, "is a folder"),
    ("model-is-fifo", ["inspect", "{H}/fifo.safetensors"], 2, "not a regular file"),
    ("truncated", ["inspect", "{H}/truncated.safetensors"], 2, "truncated or corrupt"),
    ("garbage", ["inspect", "{H}/garbage.safetensors"], 2, "not a readable safetensors"),
    ("empty-file", ["inspect", "{H}/plain.safetensors"], 2, "not a readable safetensors"),
    ("no-manifest", ["inspect", "{H}/nomanifest.safetensors"], 2, "--weights"),
    ("pickle-runs-code", ["inspect", "tv:resnet18", "--weights", "{H}/evil.pt"], 2, "refusing to load"),
    ("weights-fifo", ["inspect", "tv:resnet18", "--weights", "{H}/fifo.safetensors"], 2, "not a regular file"),
    ("unknown-timm", ["inspect", "timm:resnet181"], 2, "did you mean"),
    ("empty-tv-name", ["inspect", "tv:"], 2, "names no model"),
    ("bad-input-size", ["inspect", C, "--input-size", "3x0x8"], 2, "--input-size"),
    ("unknown-site", ["inspect", C, "--site", "@down9"], 2, "@down9"),
    ("name-markup", ["inspect", "x[/bogus]y"], 2, "x[/bogus]y"),
    ("name-bold", ["inspect", "[bold]name"], 2, "[bold]name"),
    ("name-escape", ["inspect", "a\x1b[31mred"], 2, "\\x1b[31mred"),
    ("name-2mb", ["inspect", "n" * 2_000_000], 2, "File name too long"),
    *[
        (name, ["inspect", f"{{H}}/{name}.safetensors"], 2, frag)
        for name, frag in [
            ("m-learned-file", "never read other files"),
            ("m-width-huge", "base.kwargs.width"),
            ("m-width-float", "base.kwargs.width"),
            ("m-checkpoint-path", "base.kwargs.checkpoint_path"),
            ("m-base-string", "field base must be a mapping"),
            ("m-swaps-int", "field swaps must be a list"),
            ("m-size-negative", "input_size[1]"),
            ("m-mean-length", "field mean"),
            ("m-std-zero", "std[0]"),
            ("m-mean-nan", "mean[0]"),
            ("m-name-markup", "x[/bogus]y"),
            ("m-name-escape", "\\x1b"),
            ("m-name-huge", "base.name"),
            ("m-op-nan", "gem:p must be a finite number"),
            ("m-op-unknown", "evil"),
            ("m-op-params-list", "params must be a mapping"),
            ("m-site-unknown", "nope.x"),
            ("m-mode-unknown", "mode"),
            ("m-swap-not-dict", "swaps[0]"),
            ("m-version-text", "field version"),
            ("m-version-newer", "newer poolcli"),
            ("m-classes-ints", "classes[0]"),
            ("m-unknown-field", "run"),
            ("m-source-unknown", "base.source"),
            ("m-num-classes-negative", "num_classes"),
            ("m-pad-bad", "pad.kernel"),
        ]
    ],
    # --- operator specs
    ("gem-p-nan", [*CV, "@global=gem:p=nan"], 2, "finite"),
    ("gem-p-zero", [*CV, "@global=gem:p=0"], 2, "out of range"),
    ("ppool-alpha-negative", [*CV, "@down3=ppool:alpha=-1"], 2, "out of range"),
    ("ppool-alpha-nan", [*CV, "@down3=ppool:alpha=nan"], 2, "finite"),
    ("gsp-m-zero", [*CV, "@global=gsp:m=0"], 2, "out of range"),
    ("gsp-m-huge", [*CV, "@global=gsp:m=100000"], 2, "≤ 1024"),
    ("lp-p-zero", [*CV, "@global=lp:p=0"], 2, "out of range"),
    ("blur-size-zero", [*CV, "@down3=blur:filt_size=0"], 2, "out of range"),
    ("avg-kernel-text", [*CV, "@down3=avg:kernel=abc"], 2, "not an integer"),
    ("gem-unknown-param", [*CV, "@global=gem:bogus=1"], 2, "it takes: p"),
    ("op-unknown", [*CV, "@global=zz"], 2, "unknown pooling operator"),
    ("learned-missing-file", [*CV, "@down3=learned:{H}/nope.safetensors"], 2, "file not found"),
    ("learned-fifo", [*CV, "@down3=learned:{H}/fifo.safetensors"], 2, "not a regular file"),
    ("learned-not-pooling", [*CV, "@down3=learned:{H}/stats.safetensors"], 2, "not a poolcli pooling file"),
    ("swap-without-op", [*CV, "@down3"], 2, "--swap"),
    ("swap-unknown-site", [*CV, "@down9=max"], 2, "@down9"),
    ("one-by-one-window", [*CV, "@down3=max:kernel=1"], 2, "1×1 window"),
    ("op-bare-value", [*CV, "@global=gem:p"], 2, "is not KEY=VALUE"),
    ("op-empty-param", [*CV, "@global=gem:p=3,"], 2, "empty parameter"),
    ("learned-other-grid", [*CV, "@down3=learned:{H}/pool-stride4.safetensors"], 2, "refit it"),
    ("blur-kernel-huge", [*CV, "@down3=blur:kernel=66"], 2, "≤ 65"),
    (
        "init-images-zero",
        [*CV, "@global=gsp:m=4", "--init-data", "digits:train", "--init-images", "0"],
        2,
        "--init-images",
    ),
    # --- outputs
    ("out-is-folder", ["convert", C, "--swap", "@global=gem", "-o", "{O}"], 2, "is a folder"),
    ("out-missing-folder", ["convert", C, "--swap", "@global=gem", "-o", "{O}/no/x.safetensors"], 2, "create it"),
    ("out-dev-null", ["convert", C, "--swap", "@global=gem", "-o", "/dev/null"], 2, "character device"),
    ("out-link-to-dev", ["convert", C, "--swap", "@global=gem", "-o", "{H}/devlink"], 2, "character device"),
    ("out-empty-name", ["convert", C, "--swap", "@global=gem", "-o", ""], 2, "names no file"),
    ("out-readonly-folder", ["convert", C, "--swap", "@global=gem", "-o", "{H}/ro/x.safetensors"], 2, "not writable"),
    ("out-readonly-file", ["convert", C, "--swap", "@global=gem", "-o", "{O}/prev.safetensors"], 2, "read-only"),
    ("collect-out-missing-folder", [*COL[:-1], "{O}/no/s.safetensors"], 2, "create it"),
    ("finetune-out-folder", ["finetune", C, "--epochs", "1", "-o", "{O}"], 2, "is a folder"),
    # --- collect and data
    ("max-per-class-1", [*COL, "--max-per-class", "1"], 2, "raise --max-per-class"),
    ("one-class-selected", [*COL, "--classes", "3"], 2, "only one class"),
    ("shard-out-of-range", [*COL, "--shard", "2/2"], 2, "--shard"),
    ("shard-text", [*COL, "--shard", "x"], 2, "--shard"),
    ("at-unknown", [*COL, "--at", "bogus"], 2, "--at"),
    ("collect-site-unknown", ["collect", C, "--site", "zz.top", "-o", "{O}/prev.safetensors"], 2, "zz.top"),
    ("nan-images", [*COL, "--data", "tensors:{H}/nan-images.safetensors"], 2, "NaN"),
    ("huge-images", [*COL, "--data", "tensors:{H}/huge-images.safetensors"], 2, "[0, 1]"),
    ("float-labels", [*COL, "--data", "tensors:{H}/float-labels.safetensors"], 2, "not integers"),
    ("negative-labels", [*COL, "--data", "tensors:{H}/negative-labels.safetensors"], 2, "negative"),
    ("int-images-1000", [*COL, "--data", "tensors:{H}/int-images-1000.safetensors"], 2, "0-255"),
    (
        "two-channel-rgb-model",
        [
            "collect",
            "{H}/rgb.safetensors",
            "--site",
            "@down3",
            "-o",
            "{O}/prev.safetensors",
            "--data",
            "tensors:{H}/two-channel.safetensors",
        ],
        2,
        "2-channel",
    ),
    ("no-labels", [*COL, "--data", "tensors:{H}/no-labels.safetensors"], 2, "'labels'"),
    ("length-mismatch", [*COL, "--data", "tensors:{H}/length-mismatch.safetensors"], 2, "do not match"),
    ("one-class-file", [*COL, "--data", "tensors:{H}/one-class.safetensors"], 2, "only one class"),
    ("cifar-malformed", [*COL, "--data", "cifar10:{H}/cifar"], 2, "not a well-formed"),
    ("cifar-pickle-code", [*COL, "--data", "cifar10:{H}/evilcifar"], 2, "refusing to load"),
    ("svhn-bogus-split", [*COL, "--data", "svhn:{H}/svhn:bogus"], 2, "unknown split"),
    ("folder-corrupt-image", [*COL, "--data", "folder:{H}/photos"], 2, "--bad-images skip"),
    ("folder-missing", [*COL, "--data", "folder:{H}/nope"], 2, "not found"),
    ("bad-images-choice", [*COL, "--bad-images", "maybe"], 2, "--bad-images"),
    ("dataset-kind-unknown", [*COL, "--data", "imagenet:/x"], 2, "unknown dataset"),
    ("limit-zero", [*COL, "--limit", "0"], 2, "--limit"),
    ("batch-size-zero", [*COL, "-b", "0"], 2, "--batch-size"),
    ("partial-of-another-job", [*COL, "--checkpoint-every", "1", "--limit", "300", "-b", "16"], 2, "delete"),
    ("partial-corrupt", [*COL, "--checkpoint-every", "1"], 2, "delete"),
    ("output-locked", [*COL], 2, "is writing"),
    ("partial-is-folder", [*COL, "--checkpoint-every", "1"], 2, "not a regular file"),
    ("workers-negative", [*COL, "--workers", "-1"], 2, "--workers"),
    ("input-size-channels", [*COL, "--input-size", "3x32x32"], 2, "give --input-size 1x32x32"),
    ("in-chans-negative", ["inspect", "timm:resnet18", "--in-chans", "-3"], 2, "--in-chans"),
    ("num-classes-zero", ["inspect", "timm:resnet18", "--num-classes", "0"], 2, "--num-classes"),
    ("weights-text-file", ["inspect", "tv:resnet18", "--weights", "{H}/junk.pt"], 2, "not a readable PyTorch"),
    ("weights-truncated-pickle", ["inspect", "tv:resnet18", "--weights", "{H}/truncated-pickle.pt"], 2, "corrupt"),
    *[
        (name, ["fit-pooling", "--stats", f"{{H}}/{name}.safetensors", "-o", "{O}/prev.safetensors"], 2, frag)
        for name, frag in [
            ("stats-images-negative", "field images"),
            ("stats-unknown-field", "meta.evil"),
            ("stats-site-escape", "field site"),
            ("stats-shards-out-of-range", "shards[0]"),
            ("stats-at-unknown", "field at"),
            ("stats-precision-unknown", "field precision"),
        ]
    ],
    # --- fit-pooling
    ("alpha-nan", [*FIT, "--alpha", "nan"], 2, "--alpha"),
    ("alpha-negative", [*FIT, "--alpha", "-1"], 2, "--alpha"),
    ("stride-zero", [*FIT, "--stride", "0"], 2, "--stride"),
    ("stride-negative", [*FIT, "--stride", "-1"], 2, "--stride"),
    ("stride-too-large", [*FIT, "--stride", "100"], 2, "larger than"),
    ("alpha-empty-item", [*FIT, "--alpha", "1,,2"], 2, "--alpha"),
    ("alpha-twice", [*FIT, "--alpha", "1,1.0"], 2, "given twice"),
    ("eigvecs-too-many", [*FIT, "--eigvecs", "1000"], 2, "exceeds"),
    ("stats-nan", ["fit-pooling", "--stats", "{H}/stats-nan.safetensors"], 2, "NaN"),
    ("stats-extra-tensor", ["fit-pooling", "--stats", "{H}/stats-extra-tensor.safetensors"], 2, "unexpected tensor"),
    ("stats-centre-shape", ["fit-pooling", "--stats", "{H}/stats-centre-shape.safetensors"], 2, "tensor centre"),
    ("metrics-unknown", [*EV, "digits:test", "--metrics", "classification,ranking"], 2, "unknown metric family"),
    ("recall-k-zero", [*EV, "digits:test", "--metrics", "retrieval", "--recall-k", "0"], 2, "--recall-k"),
    ("recall-k-text", [*EV, "digits:test", "--metrics", "retrieval", "--recall-k", "a,b"], 2, "--recall-k"),
    ("gallery-without-retrieval", [*EV, "digits:test", "--gallery", "digits:train"], 2, "--metrics retrieval"),
    ("distance-unknown", [*EV, "digits:test", "--metrics", "retrieval", "--distance", "manhattan"], 2, "--distance"),
    (
        "retrieval-one-per-class",
        [*EV, "digits:test", "--metrics", "retrieval", "--max-per-class", "1"],
        2,
        "≥ 2 images per class",
    ),
    ("embed-site-unknown", [*EV, "digits:test", "--metrics", "retrieval", "--embed-site", "zz.top"], 2, "zz.top"),
    (
        "whiten-dim-too-large",
        [*EV, "digits:test", "--metrics", "retrieval", "--whiten", "digits:train", "--dim", "9999"],
        2,
        "--dim",
    ),
    ("whiten-without-retrieval", [*EV, "digits:test", "--whiten", "digits:train"], 2, "--metrics retrieval"),
    # --- finetune schedules, held-out folds
    ("schedule-unknown", [*FT, "--schedule", "linear"], 2, "unknown --schedule"),
    ("schedule-step-empty", [*FT, "--schedule", "step:"], 2, "--schedule"),
    ("schedule-plateau-zero", [*FT, "--schedule", "plateau:0"], 2, "--schedule"),
    ("warmup-too-long", [*FT, "--warmup", "1"], 2, "--warmup"),
    ("momentum-one", [*FT, "--momentum", "1"], 2, "--momentum"),
    ("label-smoothing-one", [*FT, "--label-smoothing", "1"], 2, "--label-smoothing"),
    ("clip-grad-zero", [*FT, "--clip-grad", "0"], 2, "--clip-grad"),
    ("clip-grad-nan", [*FT, "--clip-grad", "nan"], 2, "--clip-grad"),
    ("holdout-too-big", [*FT, "--holdout", "0.9"], 2, "--holdout"),
    ("fold-out-of-range", [*FT, "--holdout", "0.2", "--fold", "5"], 2, "--fold"),
    ("fold-without-holdout", [*FT, "--fold", "1"], 2, "give --holdout"),
    ("holdout-and-val", [*FT, "--holdout", "0.2", "--val", "digits:test"], 2, "drop --val"),
    ("amp-unknown", [*FT, "--amp", "fp8"], 2, "--amp"),
    ("nesterov-with-adam", [*FT, "--nesterov"], 2, "SGD's"),
    ("nesterov-without-momentum", [*FT, "--optimizer", "sgd", "--momentum", "0", "--nesterov"], 2, "needs momentum"),
    ("label-smoothing-metric", [*FT, "--loss", "triplet", "--label-smoothing", "0.1"], 2, "cross-entropy's"),
    ("per-class-one-pairs", [*FT, "--loss", "triplet", "--per-class", "1"], 2, "pairs"),
    ("zsr-weight-above-one-metric", [*FT, "--loss", "triplet", "--zsr-weight", "2"], 2, "[0, 1]"),
    ("scratch-and-only-pools", [*FT, "--from-scratch", "--only-pools"], 2, "drop one"),
    ("holdout-not-one-over-k", [*FT, "--holdout", "0.3"], 2, "not 1/K"),
    ("classes-per-batch-without-per-class", [*FT, "--classes-per-batch", "3"], 2, "--per-class"),
    ("sync-bn-on-cpu", [*FT, "--sync-bn", "--device", "cpu"], 2, "--sync-bn"),
    ("augment-unknown", [*FT, "--augment", "mixup"], 2, "--augment"),
    ("augment-crop-zero", [*FT, "--augment", "crop-flip:0"], 2, "--augment"),
    ("augment-and-shift", [*FT, "--augment", "crop-flip:4", "--shift", "2"], 2, "give one of them"),
    ("ema-one", [*FT, "--ema", "1"], 2, "--ema"),
    ("loss-unknown", [*FT, "--loss", "arcfaces"], 2, "unknown --loss"),
    ("embedding-dim-with-ce", [*FT, "--embedding-dim", "16"], 2, "--embedding-dim"),
    ("per-class-zero", [*FT, "--loss", "triplet", "--per-class", "0"], 2, "--per-class"),
    ("classes-per-batch-too-many", [*FT, "--loss", "triplet", "--classes-per-batch", "50"], 2, "exceeds"),
    # --- evaluate --metrics robustness
    ("corruptions-without-robustness", [*EV, "digits:test", "--corruptions", "contrast"], 2, "--metrics robustness"),
    ("corruption-unknown", [*EV, "digits:test", *RB, "--corruptions", "gaussian_blurr"], 2, "unknown name"),
    ("corruption-left-out", [*EV, "digits:test", *RB, "--corruptions", "frost"], 2, "frost is not generated"),
    ("corruption-needs-colour", [*EV, "digits:test", *RB, "--corruptions", "saturate"], 2, "needs colour"),
    ("severity-zero", [*EV, "digits:test", *RB, "--severities", "0-3"], 2, "--severities"),
    ("severity-six", [*EV, "digits:test", *RB, "--severities", "6"], 2, "--severities"),
    ("severity-text", [*EV, "digits:test", *RB, "--severities", "high"], 2, "--severities"),
    ("severity-huge-range", [*EV, "digits:test", *RB, "--severities", "1-99999999999"], 2, "--severities"),
    ("corruptions-empty", [*EV, "digits:test", *RB, "--corruptions", ""], 2, "--corruptions is empty"),
    ("corruptions-all-none", [*EV, "digits:test", *RB, "--corruptions", "all,none"], 2, "stand alone"),
    ("shift-passes-without-robustness", [*EV, "digits:test", "--shift-passes", "3"], 2, "--metrics robustness"),
    (
        "robustness-two-channels",
        ["evaluate", "poolcli:convnet4", "--in-chans", "2", "--num-classes", "10", "--data", "digits:test", *RB],
        2,
        "grey or RGB",
    ),
    (
        "baseline-alexnet-cifar-table",
        [*EV, "digits:test", *RB, "--baseline", "alexnet-imagenet-c"],
        2,
        "ImageNet table",
    ),
    (
        "baseline-flips-not-object",
        [*EV, "digits:test", *RB, "--baseline", "{H}/baseline-flips.json"],
        2,
        "must be an object",
    ),
    ("baseline-deep-json", [*EV, "digits:test", *RB, "--baseline", "{H}/baseline-deep.json"], 2, "not JSON"),
    ("baseline-huge-int", [*EV, "digits:test", *RB, "--baseline", "{H}/baseline-bigint.json"], 2, "not JSON"),
    ("cifar10c-huge-label", [*EV, "cifar10c:{H}/c10c-biglabel", "--metrics", "robustness"], 2, "not a class index"),
    ("cifar10c-fifo", [*EV, "cifar10c:{H}/c10c-fifo", "--metrics", "robustness"], 2, "not a regular file"),
    ("perturbation-unknown", [*EV, "digits:test", *RB, "--perturbations", "wobble"], 2, "unknown name"),
    ("shift-zero", [*EV, "digits:test", *RB, "--shift", "0"], 2, "--shift"),
    ("shift-huge", [*EV, "digits:test", *RB, "--shift", "500"], 2, "--shift"),
    ("shift-text", [*EV, "digits:test", *RB, "--shift", "lots"], 2, "--shift"),
    ("shift-passes-zero", [*EV, "digits:test", *RB, "--shift-passes", "0"], 2, "--shift-passes"),
    (
        "robustness-nothing",
        [
            *EV,
            "digits:test",
            "--metrics",
            "robustness",
            "--corruptions",
            "none",
            "--perturbations",
            "none",
            "--shift",
            "none",
        ],
        2,
        "nothing to measure",
    ),
    ("baseline-missing", [*EV, "digits:test", *RB, "--baseline", "{H}/nope.json"], 2, "not a file"),
    ("baseline-not-json", [*EV, "digits:test", *RB, "--baseline", "{H}/baseline-junk.json"], 2, "not JSON"),
    ("baseline-unknown-name", [*EV, "digits:test", *RB, "--baseline", "{H}/baseline-bad.json"], 2, "gausian_noise"),
    ("baseline-model-missing", [*EV, "digits:test", *RB, "--baseline", "{H}/nope.safetensors"], 2, "not found"),
    ("cifar10c-classification", [*EV, "cifar10c:{H}/c10c-float"], 2, "robustness only"),
    ("cifar10c-missing", [*EV, "cifar10c:{H}/nope", "--metrics", "robustness"], 2, "folder not found"),
    ("cifar10c-float", [*EV, "cifar10c:{H}/c10c-float", "--metrics", "robustness"], 2, "uint8"),
    ("cifar10c-count", [*EV, "cifar10c:{H}/c10c-count", "--metrics", "robustness"], 2, "holds 15 images"),
    ("cifar10c-tiling", [*EV, "cifar10c:{H}/c10c-tiling", "--metrics", "robustness"], 2, "different labels"),
    ("cifar10c-empty", [*EV, "cifar10c:{H}/c10c-empty", "--metrics", "robustness"], 2, "no <corruption>.npy"),
    ("cifar10c-perturbations", [*EV, "cifar10c:{H}/c10c-good", *RB, "--perturbations", "translate"], 2, "clean images"),
    ("cifar10c-shift", [*EV, "cifar10c:{H}/c10c-good", *RB, "--shift", "2"], 2, "--shift none"),
    ("cifar10p-one-frame", [*EV, "cifar10p:{H}/c10p-one-frame", "--metrics", "robustness"], 2, "≥ 2"),
    (
        "save-whitening-pt",
        [*EV, "digits:test", "--metrics", "retrieval", "--whiten", "digits:train", "--save-whitening", "{O}/w.pt"],
        2,
        ".safetensors",
    ),
    ("collect-precision-unknown", [*COL, "--precision", "half"], 2, "--precision"),
    ("collect-max-memory-bad", [*COL, "--max-memory", "lots"], 2, "--max-memory"),
    ("collect-over-budget", [*COL, "--max-memory", "1M"], 2, "memory budget is 1 MiB"),
    ("fit-max-memory-bad", [*FIT, "--max-memory", "-3G"], 2, "--max-memory"),
    ("stats-one-class", ["fit-pooling", "--stats", "{H}/stats-one-class.safetensors"], 2, "one class"),
    ("stats-is-checkpoint", ["fit-pooling", "--stats", C], 2, "not a poolcli statistics file"),
    ("plot-missing-folder", [*FIT, "-o", "{O}/prev.safetensors", "--plot", "{O}/no/maps.png"], 2, "create it"),
    ("plot-unknown-type", [*FIT, "--plot", "{O}/maps.xyz"], 2, "picture type"),
    ("plot-same-as-output", [*FIT, "-o", "{O}/maps.png", "--plot", "{O}/maps.png"], 2, "same file"),
    ("norm-unknown", [*FIT, "--norm", "l3"], 2, "--norm"),
    ("solver-unknown", [*FIT, "--solver", "magic"], 2, "--solver"),
    ("fit-neither", ["fit-pooling"], 2, "either a MODEL"),
    # --- finetune and evaluate
    ("lr-inf", [*FT, "--lr", "inf"], 2, "--lr"),
    ("lr-nan", [*FT, "--lr", "nan"], 2, "--lr"),
    ("epochs-zero", [*FT[:2], "--epochs", "0", "-o", "{O}/prev.safetensors"], 2, "--epochs"),
    ("optimizer-unknown", [*FT, "--optimizer", "magic"], 2, "--optimizer"),
    ("shift-past-image", [*FT, "--shift", "1000"], 2, "--shift 1000"),
    ("pool-lr-mult-zero", [*FT, "--pool-lr-mult", "0"], 2, "--pool-lr-mult must be > 0, got 0"),
    ("weight-decay-negative", [*FT, "--weight-decay", "-1"], 2, "--weight-decay must be ≥ 0, got -1"),
    ("finetune-workers-negative", [*FT, "--workers", "-2"], 2, "--workers"),
    ("empty-dataset", [*EV, "tensors:{H}/empty.safetensors"], 2, "holds no images"),
    # --- model options (#10): preprocessing, weights, classes, splits, extensions
    ("mean-text", [*EV, "digits:test", "--mean", "a,b"], 2, "--mean"),
    ("mean-wrong-count", [*EV, "digits:test", "--mean", "0.1,0.2"], 2, "--mean needs 1 finite"),
    ("std-zero", [*EV, "digits:test", "--std", "0"], 2, "--std values must be > 0"),
    ("std-nan", [*EV, "digits:test", "--std", "nan"], 2, "--std"),
    ("crop-pct-zero", [*EV, "digits:test", "--crop-pct", "0"], 2, "--crop-pct"),
    ("crop-pct-inf", [*EV, "digits:test", "--crop-pct", "inf"], 2, "--crop-pct"),
    ("interpolation-unknown", [*EV, "digits:test", "--interpolation", "smooth"], 2, "--interpolation"),
    ("use-ema-without-weights", ["inspect", "timm:resnet18", "--use-ema"], 2, "--use-ema"),
    ("pretrained-and-weights", ["inspect", "tv:resnet18", "--pretrained", "--weights", "{H}/junk.pt"], 2, "pass one"),
    ("pretrained-poolcli", ["inspect", "poolcli:convnet4", "--pretrained"], 2, "no pretrained weights"),
    ("pretrained-on-checkpoint", ["inspect", C, "--pretrained"], 2, "not to the checkpoint"),
    ("tv-tag-unknown", ["inspect", "tv:resnet18.BOGUS"], 2, "no weights 'BOGUS'"),
    ("timm-tag-unknown", ["inspect", "timm:resnet18.bogus"], 2, "timm cannot build"),
    ("weights-per-model", ["evaluate", C, C, "--weights", "{H}/junk.pt"], 2, "1 --weights for 2 models"),
    ("folder-split-missing", [*EV, "folder:{H}/photos:test", "--bad-images", "skip"], 2, "no 'test' split"),
    ("class-names-differ", [*EV, "folder:{H}/photos", "--bad-images", "skip"], 2, "--allow-class-mismatch"),
    ("convert-out-pt", ["convert", C, "--swap", "@global=gem", "-o", "{O}/x.pt"], 2, ".safetensors"),
    ("collect-out-pt", [*COL[:-1], "{O}/s.pt"], 2, ".safetensors"),
    ("fit-out-png", [*FIT, "-o", "{O}/p.png"], 2, ".safetensors"),
    (
        "finetune-classes-count",
        [
            *FT[:2],
            "--data",
            "folder:{H}/photos",
            "--bad-images",
            "skip",
            "-o",
            "{O}/f.safetensors",
            "--input-size",
            "1x32x32",
        ],
        2,
        "--num-classes 2",
    ),
    ("at-choice", [*COL, "--at", "sideways"], 2, "--at"),
    ("optimizer-choice", [*FT, "--optimizer", "lion"], 2, "--optimizer"),
    ("finetune-nan-images", [*FT, "--data", "tensors:{H}/nan-images.safetensors"], 2, "NaN"),
    (
        "finetune-nan-weights",
        ["finetune", "{H}/nan-weights.safetensors", "--epochs", "1", "--limit", "64", "-o", "{O}/prev.safetensors"],
        1,
        "diverged",
    ),
    ("evaluate-nan-weights", ["evaluate", "{H}/nan-weights.safetensors", "--limit", "16"], 1, "NaN/inf"),
    ("evaluate-labels-out-of-range", [*EV, "tensors:{H}/labels-20.safetensors"], 2, "has 10 outputs"),
    ("evaluate-huge-images", [*EV, "tensors:{H}/huge-images.safetensors"], 2, "[0, 1]"),
    # --- stats merge
    (
        "merge-same-twice",
        ["stats", "merge", "{H}/stats.safetensors", "{H}/stats.safetensors", "-o", "{O}/prev.safetensors"],
        2,
        "give each shard once",
    ),
    (
        "merge-another-run",
        ["stats", "merge", "{H}/stats.safetensors", "{H}/stats-down2.safetensors", "-o", "{O}/prev.safetensors"],
        2,
        "another run",
    ),
    # --- usage
    ("merge-no-files", ["stats", "merge", "-o", "{O}/prev.safetensors"], 2, "Missing argument"),
    ("unknown-option", ["inspect", C, "--bogus"], 2, "No such option"),
    ("convert-without-output", ["convert", C, "--swap", "@global=gem"], 2, "Missing option"),
    ("unknown-command", ["explode"], 2, "No such command"),
    ("batch-size-text", ["evaluate", C, "--batch-size", "zero"], 2, "--batch-size"),
]
if not torch.cuda.is_available():  # where a GPU is visible the same command is valid
    CASES.append(("fit-device-cuda-absent", [*FIT, "--device", "cuda"], 2, "no CUDA GPU"))


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input(case, h, tmp_path, cli):
    name, argv, want_code, fragment = case
    out = tmp_path / "out"
    out.mkdir()
    (out / "prev.safetensors").write_bytes(PREVIOUS)
    if name == "out-link-to-dev" and not (h / "devlink").exists():
        os.symlink("/dev/null", h / "devlink")
    if name == "out-readonly-folder":  # refused from the mode bits, so also when root runs the tests
        (h / "ro").mkdir(exist_ok=True)
        os.chmod(h / "ro", 0o500)
    if name == "out-readonly-file":
        os.chmod(out / "prev.safetensors", 0o444)
    if name == "partial-is-folder":
        (out / "prev.safetensors.partial").mkdir()
    if name == "partial-of-another-job":
        _partial_of_another_job(h, out)
    if name == "partial-corrupt":
        (out / "prev.safetensors.partial").write_bytes(b"half a file")
    before = sorted(p.name for p in out.iterdir())
    snapshot = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    argv = [a.replace("{H}", str(h)).replace("{O}", str(out)) for a in argv]
    if name == "output-locked":
        from poolcli.io.atomic import output_lock

        with output_lock(out / "prev.safetensors"):
            code, stdout, stderr = cli(*argv)
        snapshot.pop(".prev.safetensors.lock", None)
        before = [b for b in before if b != ".prev.safetensors.lock"]
    else:
        code, stdout, stderr = cli(*argv)
    lines = stderr.splitlines()
    assert code == want_code, stderr
    assert stdout == "", stdout
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr[:2000]
    assert "Traceback" not in stderr and len(lines[0]) < 1200
    assert fragment in lines[0], lines[0][:600]
    assert sorted(p.name for p in out.iterdir()) == before  # nothing left behind
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == snapshot  # previous output untouched


def test_corpus_is_large_enough():
    assert len(CASES) >= 80 and len({c[0] for c in CASES}) == len(CASES)


def test_no_pickle_ran_code():
    assert not os.path.exists("/tmp/poolcli-pwned")


def test_cleanup_fixture_links(h):
    link = h / "devlink"
    if link.is_symlink():
        link.unlink()
    shutil.rmtree(h / "ro", ignore_errors=True)
