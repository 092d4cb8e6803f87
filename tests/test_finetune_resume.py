"""finetune as a long run: schedules as pure functions of the position, the training state after every epoch,
--resume bit-identical to an uninterrupted run (Ctrl-C mid-epoch, kill -9), best model and log files,
--only-pools freezing every other tensor."""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from poolcli import api, progress
from poolcli.errors import BadInputError
from poolcli.train.schedule import Schedule

from .conftest import CNN, ROOT

RUN = dict(data="digits:train", val="digits:test", epochs=3, limit=96, batch_size=32, device="cpu", seed=3)


# ----------------------------------------------------------------------------- schedules
def test_schedules_are_the_published_shapes():
    cos = Schedule.parse("cosine")
    assert cos.factor(0, 0, 10, 4) == 1.0 and cos.factor(2, 0, 10, 4) == pytest.approx(0.5)
    assert cos.factor(3, 9, 10, 4) == pytest.approx(0.5 * (1 + math.cos(math.pi * 39 / 40)))
    step = Schedule.parse("step:2,4")
    assert [step.factor(e, 0, 5, 6) for e in range(6)] == pytest.approx([1, 0.1, 0.1, 0.01, 0.01, 0.01])
    warm = Schedule.parse("constant", warmup=2)
    assert [warm.factor(e, s, 2, 5) for e in range(3) for s in range(2)] == pytest.approx([0.25, 0.5, 0.75, 1, 1, 1])
    wcos = Schedule.parse("cosine", warmup=1)
    assert wcos.factor(1, 0, 4, 3) == 1.0 and wcos.factor(2, 0, 4, 3) == pytest.approx(0.5)
    plat = Schedule.parse("plateau:2")
    for v in (0.5, 0.6, 0.6, 0.55, 0.6):  # best 0.6 at epoch 2, then 3 epochs without improvement
        plat.end_epoch(v, higher_is_better=True)
    assert plat.scale == pytest.approx(0.1) and plat.factor(5, 0, 3, 9) == pytest.approx(0.1)


@pytest.mark.parametrize("text", ["cosin", "step", "step:0", "step:a", "plateau:0", "constant:3", "cosine:1"])
def test_bad_schedules(text):
    with pytest.raises(BadInputError, match="schedule"):
        Schedule.parse(text)


# ----------------------------------------------------------------------------- state, resume
class StopAt:
    """A progress reporter that raises KeyboardInterrupt (what Ctrl-C and SIGTERM become) inside a training
    epoch after ``after`` batches."""

    def __init__(self, epoch: int, after: int):
        self.epoch, self.after = epoch, after

    @contextlib.contextmanager
    def task(self, description, total, unit):
        seen = []

        def advance(n=1):
            seen.append(n)
            if description.startswith(f"train epoch {self.epoch}/") and len(seen) == self.after:
                raise KeyboardInterrupt

        yield advance


def _run(out, **kw):
    return api.finetune(str(CNN), output=out, **{**RUN, **kw})


def interrupted_then_resumed(out, stopper, model=CNN, run=None, **kw) -> bytes:
    """Run until ``stopper`` raises KeyboardInterrupt (Ctrl-C's path: the state is saved, -o is not written),
    then rerun with --resume; the bytes of the final checkpoint."""
    settings = {**(RUN if run is None else run), **kw}
    previous = progress.set_reporter(stopper)
    try:
        with pytest.raises(KeyboardInterrupt):
            api.finetune(str(model), output=out, **settings)
    finally:
        progress.set_reporter(previous)
    assert not out.exists() and out.with_name(out.name.replace(".safetensors", ".last.safetensors")).exists()
    api.finetune(str(model), output=out, resume=True, **settings)
    return out.read_bytes()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "ft.safetensors"
    _, doc = _run(out, schedule="step:2", optimizer="sgd", lr=0.01, label_smoothing=0.1, clip_grad=5.0, shift=2)
    return out, doc


def test_files_written_each_epoch(reference):
    out, doc = reference
    stem = out.with_name("ft")
    last, best, log = (stem.with_suffix(s) for s in (".last.safetensors", ".best.safetensors", ".log.jsonl"))
    assert last.exists() and best.exists() and log.exists()
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2, 3] and all("seconds" in r for r in lines)
    assert lines[1]["lr"] == pytest.approx(0.001)  # step:2 → ×0.1 from epoch 2
    best_epoch = max(lines, key=lambda r: r["val_top1"])["epoch"]
    assert doc["best"]["epoch"] == best_epoch
    manifest = api.load_model(str(out)).extra["finetune"]
    assert [h["epoch"] for h in manifest["history"]] == [1, 2, 3] and "seconds" not in manifest["history"][0]
    b = api.load_model(str(best))
    assert [h["epoch"] for h in b.extra["finetune"]["history"]] == list(range(1, best_epoch + 1))


SLOW = pytest.mark.slow  # the fast suite keeps one case of each family


@pytest.mark.parametrize("epoch, after", [pytest.param(1, 1, marks=SLOW), (2, 2), pytest.param(3, 3, marks=SLOW)])
def test_ctrl_c_then_resume_is_bit_identical(tmp_path, reference, epoch, after):
    ref, _ = reference
    kw = dict(schedule="step:2", optimizer="sgd", lr=0.01, label_smoothing=0.1, clip_grad=5.0, shift=2)
    assert interrupted_then_resumed(tmp_path / "ft.safetensors", StopAt(epoch, after), **kw) == ref.read_bytes()


def test_resume_refuses_another_run(tmp_path):
    out = tmp_path / "ft.safetensors"
    _run(out, epochs=1)
    with pytest.raises(BadInputError, match="another run.*lr"):
        _run(out, epochs=1, lr=0.5, resume=True)
    with pytest.raises(BadInputError, match="give the same -o"):
        api.finetune(str(CNN), **{**RUN, "epochs": 1}, resume=True)


def test_resume_without_state_starts_over_and_a_finished_run_is_rewritten_identically(tmp_path):
    out = tmp_path / "ft.safetensors"
    _run(out, epochs=1, resume=True)
    first = out.read_bytes()
    out.unlink()
    _run(out, epochs=1, resume=True)  # the state says finished: nothing to train, the same file again
    assert out.read_bytes() == first


def test_only_pools_leaves_every_other_tensor_unchanged(tmp_path):
    conv = tmp_path / "pp.safetensors"
    api.convert(str(CNN), ["@down2=ppool"], output=conv)
    before = api.load_model(str(conv)).module.state_dict()
    out = tmp_path / "ft.safetensors"
    api.finetune(str(conv), output=out, **{**RUN, "epochs": 1, "val": None}, only_pools=True, lr=0.01)
    after = api.load_model(str(out)).module.state_dict()
    changed = sorted(k for k in before if not torch.equal(before[k], after[k]))
    assert changed and all(".1.branch." in k for k in changed), changed  # only P-pooling's side branch moved


@pytest.mark.slow
def test_kill_9_at_random_points_then_resume_is_bit_identical(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NO_COLOR": "1"}
    args = ["-q", "finetune", str(CNN), "--data", "digits:train", "--val", "digits:test", "--limit", "160"]
    args += ["--epochs", "4", "-b", "16", "--device", "cpu", "--optimizer", "sgd", "--lr", "0.02", "--shift", "2"]
    ref = tmp_path / "ref" / "ft.safetensors"
    ref.parent.mkdir()
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "poolcli", *args, "-o", str(ref)], env=env, check=True, cwd=ROOT)
    full = time.perf_counter() - t0
    out = tmp_path / "job" / "ft.safetensors"
    out.parent.mkdir()
    job = [sys.executable, "-m", "poolcli", *args, "--resume", "-o", str(out)]
    kills = 0
    for frac in (0.3, 0.45, 0.6, 0.75, 0.9, 0.5, 0.65):
        proc = subprocess.Popen(job, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(frac * full)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
        if out.exists():
            break
    assert kills >= 3
    done = subprocess.run(job, env=env, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert out.read_bytes() == ref.read_bytes()


# ----------------------------------------------------------------------------- protocols of seed 001
def test_holdout_folds_are_stratified_disjoint_and_partition():
    from poolcli.data.specs import stratified_folds

    labels = torch.tensor([c for c in range(4) for _ in range(10 + 3 * c)])
    helds = []
    for k in range(5):
        kept, held = stratified_folds(labels, 0.2, k, seed=7)
        assert not set(kept.tolist()) & set(held.tolist())
        assert sorted(kept.tolist() + held.tolist()) == list(range(labels.numel()))
        counts = torch.bincount(labels[held], minlength=4)
        totals = torch.bincount(labels, minlength=4)
        assert ((counts - totals / 5).abs() <= 1).all()  # every class in proportion
        helds.append(set(held.tolist()))
    assert set().union(*helds) == set(range(labels.numel())) and sum(map(len, helds)) == labels.numel()
    with pytest.raises(BadInputError, match="--fold must be in 0..4"):
        stratified_folds(labels, 0.2, 5, seed=7)


def test_finetune_holdout_validates_on_the_held_out_fold(tmp_path):
    _, doc = api.finetune(
        str(CNN), data="digits:train", epochs=1, limit=100, batch_size=32, device="cpu", holdout=0.25, fold=1
    )
    assert 70 <= doc["images"] <= 80 and "val_top1" in doc["final"] and "held-out fold 1 of 4" in doc["val"]
    with pytest.raises(BadInputError, match="drop --val"):
        api.finetune(str(CNN), data="digits:train", val="digits:test", epochs=1, limit=50, holdout=0.2)
    with pytest.raises(BadInputError, match="give --holdout"):
        api.finetune(str(CNN), data="digits:train", epochs=1, limit=50, fold=2)


def test_from_scratch_keeps_only_the_swapped_operators(tmp_path):
    conv = tmp_path / "pp.safetensors"
    api.convert(str(CNN), ["@down2=ppool"], output=conv)
    bundle = api.load_model(str(conv))
    before = {k: v.clone() for k, v in bundle.module.state_dict().items()}
    from poolcli.pipeline.finetune import _reinitialise

    _reinitialise(bundle, seed=0)
    after = bundle.module.state_dict()
    kept = sorted(k for k in before if torch.equal(before[k], after[k]))
    ops = [k for k in before if ".1.branch." in k]
    assert ops and set(ops) <= set(kept)
    weights = [k for k in before if k.endswith("weight") and k not in ops]
    assert weights and all(not torch.equal(before[k], after[k]) for k in weights)  # every other weight drawn anew
    again = api.load_model(str(conv))
    _reinitialise(again, seed=0)
    assert all(torch.equal(after[k], v) for k, v in again.module.state_dict().items())  # seeded


def test_torchrun_two_ranks_follow_the_one_process_loss_curve(tmp_path, cli):
    """The same global batches split over 2 CPU ranks (gloo), gradients averaged: with BatchNorm frozen
    (--only-pools) the loss curve and validation equal one process's to 1e-6 relative; rank 0 alone writes."""
    from .conftest import torchrun

    conv = tmp_path / "pp.safetensors"
    api.convert(str(CNN), ["@down2=ppool"], output=conv)
    args = ["finetune", str(conv), "--data", "digits:train", "--val", "digits:test", "--limit", "96", "-b", "32"]
    args += ["--epochs", "2", "--only-pools", "--lr", "0.01", "--shift", "2", "--device", "cpu", "--json"]
    code, out, err = cli(*args, "-o", str(tmp_path / "one.safetensors"))
    assert code == 0, err
    one = json.loads(out)
    (tmp_path / "two").mkdir()
    proc = torchrun(*args, "-o", str(tmp_path / "two" / "ft.safetensors"), port=29551)
    assert proc.returncode == 0, proc.stderr[-2000:]
    two = json.loads(proc.stdout)  # one JSON document: rank 0 alone reports
    for a, b in zip(one["history"], two["history"]):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-6) and b["val_top1"] == a["val_top1"]
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == [
        "ft.best.safetensors",
        "ft.last.safetensors",
        "ft.log.jsonl",
        "ft.safetensors",
    ]


@pytest.mark.parametrize(
    "opts",
    [
        pytest.param({"ema": 0.9}, marks=SLOW),
        pytest.param({"amp": "bf16"}, marks=SLOW),
        pytest.param({"channels_last": True}, marks=SLOW),
        {"amp": "bf16", "ema": 0.9, "channels_last": True},
    ],
)
def test_amp_ema_channels_last_train_and_resume_bit_identically(tmp_path, opts):
    kw = dict(epochs=2, lr=1e-3, **opts)
    ref = tmp_path / "ref.safetensors"
    _, doc = _run(ref, **kw)
    assert doc["final"]["val_top1"] > 0.8, doc["final"]
    assert interrupted_then_resumed(tmp_path / "job.safetensors", StopAt(2, 1), **kw) == ref.read_bytes()


def test_ema_result_is_the_average(tmp_path):
    """With --ema the written weights are timm's ModelEmaV3 average, not the last step's."""
    plain = api.finetune(str(CNN), **{**RUN, "epochs": 1, "val": None})[0].module.state_dict()
    ema = api.finetune(str(CNN), **{**RUN, "epochs": 1, "val": None}, ema=0.5)[0].module.state_dict()
    start = api.load_model(str(CNN)).module.state_dict()
    k = next(k for k in plain if k.endswith("weight") and plain[k].dim() == 4)
    assert not torch.equal(plain[k], ema[k]) and not torch.equal(start[k], ema[k])


# ----------------------------------------------------------------------------- augmentation
def test_crop_flip_is_pad_crop_then_mirror():
    from poolcli.data.augment import crop_flip

    x = torch.rand(6, 2, 5, 7)
    fill = torch.tensor([-1.0, -2.0])
    g = torch.Generator().manual_seed(4)
    out = crop_flip(x, 2, fill, g)
    g = torch.Generator().manual_seed(4)
    off = torch.randint(0, 5, (6, 2), generator=g)
    flip = torch.rand(6, generator=g) < 0.5
    padded = torch.cat([torch.full((6, 1, 9, 11), -1.0), torch.full((6, 1, 9, 11), -2.0)], 1)
    padded[:, :, 2:7, 2:9] = x
    for i in range(6):
        want = padded[i, :, off[i, 0] : off[i, 0] + 5, off[i, 1] : off[i, 1] + 7]
        assert torch.equal(out[i], want.flip(-1) if flip[i] else want)
    # a rank's part of the global batch: the same images as one process
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    whole = crop_flip(x, 2, fill, g1)
    assert torch.equal(crop_flip(x[1::2], 2, fill, g2, part=(6, 1, 2)), whole[1::2])


@pytest.mark.parametrize(
    "augment", [pytest.param("crop-flip:4", marks=SLOW), "imagenet", pytest.param("shift:2", marks=SLOW)]
)
def test_augmentations_train_and_resume_bit_identically(tmp_path, augment):
    kw = dict(epochs=2, augment=augment, limit=64)
    ref = tmp_path / "ref.safetensors"
    _, doc = _run(ref, **kw)
    assert doc["augment"] == augment
    assert interrupted_then_resumed(tmp_path / "job.safetensors", StopAt(2, 1), **kw) == ref.read_bytes()


@pytest.mark.filterwarnings("ignore:.*random weights")
def test_imagenet_augment_on_photos(photos, tmp_path):
    _, doc = api.finetune(
        "timm:resnet10t",
        data=f"folder:{photos}:train",
        input_size="3x64x64",
        num_classes=2,
        epochs=1,
        batch_size=4,
        augment="imagenet",
        device="cpu",
    )
    assert doc["images"] == 12 and math.isfinite(doc["final"]["loss"])


def test_operator_settings_shape_the_optimizer_groups(tmp_path):
    """P-pooling's side branch at its own lr multiplier (seed 002's ×3) when the operator says so, every pooling
    parameter (GSP's prototypes too) without weight decay, the rest at lr with weight decay."""
    from poolcli.models.surgery import swapped_operators
    from poolcli.train.loop import param_groups

    out = tmp_path / "pp.safetensors"
    api.convert(str(CNN), ["@down2=ppool:lr_mult=3,alpha_init=20,alpha_max=35", "@global=gsp:m=8"], output=out)
    b = api.load_model(str(out))
    groups = param_groups(b.module, 1e-3, 5e-4, swapped_operators(b.module), 10.0)
    names = {id(p): n for n, p in b.module.named_parameters()}
    by_lr = {round(g["lr"], 9): (g["weight_decay"], sorted(names[id(p)] for p in g["params"])) for g in groups}
    assert by_lr[0.003][0] == 0.0 and all(".branch." in n for n in by_lr[0.003][1])
    assert by_lr[0.01][0] == 0.0 and any("prototypes" in n or "proto" in n for n in by_lr[0.01][1])
    assert by_lr[0.001][0] == 5e-4 and not any(".branch." in n for n in by_lr[0.001][1])


@pytest.mark.slow
def test_real_sigterm_mid_epoch_then_resume_is_bit_identical(tmp_path):
    """SIGTERM sent at arbitrary moments of a run whose BatchNorm trains: the signal is held back until the
    step ends, the state is that of a step boundary, and the resumed run's file equals an uninterrupted one."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NO_COLOR": "1"}
    args = ["-q", "finetune", str(CNN), "--data", "digits:train", "--limit", "240", "-b", "16", "--epochs", "3"]
    args += ["--device", "cpu", "--optimizer", "adam", "--lr", "0.002"]
    ref = tmp_path / "ref.safetensors"
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "poolcli", *args, "-o", str(ref)], env=env, check=True, cwd=ROOT)
    full = time.perf_counter() - t0
    out = tmp_path / "job.safetensors"
    job = [sys.executable, "-m", "poolcli", *args, "--resume", "-o", str(out)]
    stopped = 0
    for frac in (0.45, 0.55, 0.62, 0.7, 0.8, 0.9):
        proc = subprocess.Popen(job, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(frac * full)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            stopped += proc.wait() == 143
        if out.exists():
            break
    assert stopped >= 2
    done = subprocess.run(job, env=env, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert out.read_bytes() == ref.read_bytes()


def test_fp16_scaler_state_is_resumed(tmp_path):
    """The fp16 gradient scaler continues from the saved scale (not a fresh 65536)."""
    from poolcli.io.tensorfile import read_tensors, write_tensors

    out = tmp_path / "ft.safetensors"
    kw = dict(epochs=2, amp="fp16", limit=64, val=None)
    with pytest.raises(KeyboardInterrupt):
        previous = progress.set_reporter(StopAt(2, 1))
        try:
            _run(out, **kw)
        finally:
            progress.set_reporter(previous)
    state = out.with_name("ft.last.safetensors")
    tensors, meta = read_tensors(state)
    meta["scaler"]["scale"] = 1024.0
    write_tensors(state, tensors, meta)
    _run(out, resume=True, **kw)
    _, after = read_tensors(state)
    assert after["scaler"]["scale"] <= 2048.0  # continued from 1024 (it may have grown once), not 65536
