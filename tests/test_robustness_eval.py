"""evaluate --metrics robustness on the fixtures: one pass for several models on the same altered pixels,
cross-checked against the classification pass, baselines (a model of the run, a file, a report), the published
arrays, shift consistency, plots, and torchrun giving the one-process numbers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from poolcli import api
from poolcli.errors import BadInputError

from .conftest import CNN, RESNET

SMALL = dict(max_per_class=2, device="cpu", batch_size=32)
PLAN = dict(corruptions="gaussian_noise,contrast", severities="1,5", perturbations="translate")


def _robust(models, **kw):
    opts = {**SMALL, **PLAN, "shift": 1, "shift_passes": 2, **kw}
    return api.evaluate([str(m) for m in models], "digits:test", metrics=["robustness"], **opts)


@pytest.fixture(scope="module")
def two_models():
    return _robust([CNN, RESNET])


def test_report_shape_and_determinism(two_models):
    doc = two_models
    again = _robust([CNN, RESNET])
    for a, b in zip(doc["results"], again["results"]):
        assert a["robustness"] | {"forward_ms_per_image": 0} == b["robustness"] | {"forward_ms_per_image": 0}
    r = doc["results"][0]["robustness"]
    assert r["images"] == 20
    assert set(r["corruptions"]["errors"]) == {"gaussian_noise", "contrast"}
    assert set(r["corruptions"]["errors"]["contrast"]) == {"1", "5"}
    assert set(r["perturbations"]["flip_probability"]) == {"translate"}
    assert len(r["shift"]["diagonal_accuracy"]) == 3 and r["shift"]["diagonal_shift"] == [-1, 0, 1]
    proto = doc["robustness_protocol"]
    assert proto["table"] == "cifar" and proto["shift"]["protocol"] == "small"
    assert proto["corruption_parameters"]["contrast"]["5"]  # the published parameters are recorded
    assert proto["flip_rule"] == {"translate": "previous frame"}
    assert set(proto["cost"]["generation_ms_per_image"]) == {
        "corruption/gaussian_noise",
        "corruption/contrast",
        "perturbation/translate",
        "shift",
    }
    names = {c["b"] for c in doc["comparisons"]} | {c["a"] for c in doc["comparisons"]}
    assert len(names) == 2
    pair = doc["comparisons"][0]
    assert {"robustness.corruption_accuracy", "robustness.flip_probability", "robustness.consistency"} <= set(pair)


def test_clean_error_equals_the_classification_pass(two_models):
    """The robustness pass's clean images are the model's own inputs: its clean error is 1 − top-1."""
    doc = api.evaluate([str(CNN), str(RESNET)], "digits:test", metrics=["classification"], **SMALL)
    for a, b in zip(doc["results"], two_models["results"]):
        assert b["robustness"]["clean_error"] == pytest.approx(1 - a["top1"], abs=1e-12)


def test_diagonal_shift_at_zero_is_the_clean_accuracy(two_models):
    for r in two_models["results"]:
        s = r["robustness"]["shift"]
        assert s["diagonal_accuracy"][s["diagonal_shift"].index(0)] == pytest.approx(1 - r["robustness"]["clean_error"])
        assert 0 <= s["consistency"] <= 1 and len(s["consistency_per_pass"]) == 2


def test_baseline_model_and_file_give_the_same_ce(tmp_path, two_models):
    doc = _robust([CNN], baseline=str(RESNET))
    model, base = doc["results"]
    assert base["role"] == "baseline" and base["model"].endswith("digits-resnet.safetensors")
    ce = model["robustness"]["corruptions"]
    errs_b = base["robustness"]["corruptions"]["errors"]
    for c, by_s in ce["errors"].items():
        want = sum(by_s.values()) / sum(errs_b[c].values())
        assert ce["ce"][c] == pytest.approx(want)
        assert base["robustness"]["corruptions"]["ce"][c] == pytest.approx(1.0)
    # the same numbers as the two-model run without a baseline (same pixels, same seeds)
    assert ce["errors"] == two_models["results"][0]["robustness"]["corruptions"]["errors"]
    fr = model["robustness"]["perturbations"]["flip_rate"]
    fp, fpb = (
        model["robustness"]["perturbations"]["flip_probability"],
        base["robustness"]["perturbations"]["flip_probability"],
    )
    for p in fp:
        assert fr[p] == (pytest.approx(fp[p] / fpb[p]) if fpb[p] else None)
    # a report of the baseline as --baseline FILE: the same CE
    report = tmp_path / "resnet.json"
    report.write_text(json.dumps(_robust([RESNET])))
    from_file = _robust([CNN], baseline=str(report))["results"][0]["robustness"]["corruptions"]
    assert from_file["ce"] == pytest.approx(ce["ce"]) and from_file["relative_ce"] == pytest.approx(ce["relative_ce"])


def test_builtin_alexnet_baseline_needs_the_imagenet_table_and_all_severities():
    with pytest.raises(BadInputError, match="only the ImageNet table"):
        _robust([CNN], baseline="alexnet-imagenet-c")  # 32 px digits: the CIFAR table
    doc = _robust([CNN], baseline="alexnet-imagenet-c", corruption_table="imagenet")
    c = doc["results"][0]["robustness"]["corruptions"]
    assert c["ce"] == {} and "evaluate all five" in c["ce_undefined"]["contrast"]
    kw = dict(severities="1-5", perturbations="none", shift="none", corruption_table="imagenet")
    doc = _robust([CNN], baseline="alexnet-imagenet-c", **kw)
    c = doc["results"][0]["robustness"]["corruptions"]
    want = sum(c["errors"]["contrast"].values()) / (5 * 0.853204)
    assert c["ce"]["contrast"] == pytest.approx(want)


def _digit_pixels(n_per_class=3):
    """uint8 [n, 32, 32, 3] digits at the fixture's geometry, and their labels."""
    from poolcli.data.specs import open_dataset
    from poolcli.data.transforms import Preprocess

    ds = open_dataset(
        "digits:test", transform=Preprocess((3, 32, 32), (0.0,) * 3, (1.0,) * 3), max_per_class=n_per_class
    )
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    return (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy(), ds.labels.numpy()


def _direct_correct(images_u8, labels):
    bundle = api.load_model(str(CNN))
    x = torch.from_numpy(images_u8).permute(0, 3, 1, 2).float() / 255
    with torch.inference_mode():
        pred = bundle.module.eval()(bundle.transform.from_pixels(x)).argmax(1)
    return (pred == torch.from_numpy(labels)).numpy()


def test_cifar10c_arrays_give_the_direct_errors(tmp_path):
    """CIFAR-10-C layout written from digits: severity s holds the images rolled by s−1 pixels; the errors of
    the pass equal a direct forward of those arrays."""
    imgs, labels = _digit_pixels()
    d = tmp_path / "c10c"
    d.mkdir()
    blocks = [np.roll(imgs, s, axis=2) for s in range(5)]
    np.save(d / "labels.npy", np.tile(labels, 5).astype(np.uint8))
    np.save(d / "contrast.npy", np.concatenate(blocks))
    np.save(d / "fog.npy", np.concatenate(blocks[::-1]))
    (d / "classes.txt").write_text("\n".join(str(i) for i in range(10)))
    doc = api.evaluate([str(CNN)], f"cifar10c:{d}", metrics=["robustness"], device="cpu", batch_size=7)
    r = doc["results"][0]["robustness"]
    assert r["clean_error"] is None and r["images"] == len(labels)
    for s in range(1, 6):
        want = 1 - _direct_correct(blocks[s - 1], labels).mean()
        assert r["corruptions"]["errors"]["contrast"][str(s)] == pytest.approx(want)
        assert r["corruptions"]["errors"]["fog"][str(6 - s)] == pytest.approx(want)
    assert doc["robustness_protocol"]["arrays"]["corruptions"] == ["fog", "contrast"] or set(
        doc["robustness_protocol"]["arrays"]["corruptions"]
    ) == {"fog", "contrast"}
    with pytest.raises(BadInputError, match="robustness only"):
        api.evaluate([str(CNN)], f"cifar10c:{d}", metrics=["classification"], device="cpu")
    sel = api.evaluate([str(CNN)], f"cifar10c:{d}", metrics=["robustness"], device="cpu", classes="0-4")
    assert sel["results"][0]["robustness"]["images"] == 15


def test_cifar10p_arrays_flip_probability(tmp_path):
    """Sequences alternating two images: the flip probability is the share of sequences whose two images get
    different predictions (consecutive rule), the first-frame rule for a noise name gives half of that."""
    imgs, labels = _digit_pixels(2)
    other = np.roll(imgs, 1, axis=0)  # another digit
    seq = np.stack([imgs, other, imgs, other, imgs], axis=1)  # [n, 5, 32, 32, 3]
    d = tmp_path / "c10p"
    d.mkdir()
    np.save(d / "translate.npy", seq)
    np.save(d / "gaussian_noise.npy", seq)
    doc = api.evaluate([str(CNN)], f"cifar10p:{d}", metrics=["robustness"], device="cpu", allow_class_mismatch=True)
    p = doc["results"][0]["robustness"]["perturbations"]["flip_probability"]
    bundle = api.load_model(str(CNN))
    with torch.inference_mode():
        f = lambda a: bundle.module.eval()(
            bundle.transform.from_pixels(torch.from_numpy(a).permute(0, 3, 1, 2).float() / 255)
        ).argmax(1)  # noqa: E731
        differ = (f(imgs) != f(other)).double().mean().item()
    assert p["translate"] == pytest.approx(differ)
    assert p["gaussian_noise"] == pytest.approx(differ / 2)


def test_robustness_plots(tmp_path):
    doc = _robust([CNN, RESNET], plot=tmp_path / "plots", baseline=str(RESNET))
    names = sorted(p.rsplit("/", 1)[1] for p in doc["plots"])
    assert names == [
        "robustness-corruption-examples.png",
        "robustness-errors.png",
        "robustness-flips.png",
        "robustness-sequence-examples.png",
        "robustness-shift.png",
    ]
    for p in doc["plots"]:
        assert open(p, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_cli_tables_and_json(cli):
    args = ["evaluate", str(CNN), str(RESNET), "--metrics", "classification,robustness", "--max-per-class", "3"]
    args += ["--corruptions", "contrast", "--severities", "1-2", "--perturbations", "translate", "--shift", "1"]
    args += ["--device", "cpu", "--json"]
    code, out, err = cli(*args)
    assert code == 0, err
    doc = json.loads(out)
    assert doc["metrics"] == ["classification", "robustness"]
    assert "corruption error" in err and "flip probability" in err and "shift consistency" in err
    assert doc["results"][0]["robustness"]["clean_error"] == pytest.approx(1 - doc["results"][0]["top1"])


def test_default_plan_on_grey_images_leaves_out_colour_corruptions():
    from poolcli.pipeline.robustness import make_plan
    from poolcli.robust import corruptions as C

    bundle = api.load_model(str(CNN))
    plan = make_plan(
        "digits:test",
        bundle,
        corruptions=None,
        severities=None,
        perturbations=None,
        shift=None,
        shift_passes=5,
        table=None,
        seed=0,
    )
    assert plan.severities == [1, 2, 3, 4, 5] and plan.shift == 4 and plan.table == "cifar"
    assert all(c in C.BENCHMARK for c in plan.corruptions)
    assert all(not C.needs_colour(c) for c in plan.corruptions)
    assert set(plan.dropped) >= set(C.LEFT_OUT) & set(C.BENCHMARK)


@pytest.mark.slow
def test_error_grows_with_severity_on_average():
    """Every generated corruption at every severity on 200 digits: the mean error over corruptions does not
    fall as severity rises (per corruption it may: the published tables are not all monotone for every model)."""
    doc = api.evaluate(
        [str(CNN)],
        "digits:test",
        metrics=["robustness"],
        max_per_class=20,
        device="cpu",
        batch_size=100,
        corruptions="all",
        perturbations="none",
        shift="none",
    )
    errs = doc["results"][0]["robustness"]["corruptions"]["errors"]
    mean = [np.mean([by_s[str(s)] for by_s in errs.values()]) for s in range(1, 6)]
    assert all(b >= a - 1e-9 for a, b in zip(mean, mean[1:])), mean
    assert mean[-1] > doc["results"][0]["robustness"]["clean_error"]


def test_torchrun_gives_the_one_process_numbers(cli, tmp_path):
    from .conftest import torchrun

    args = ["evaluate", str(CNN), str(RESNET), "--metrics", "robustness", "--max-per-class", "2", "--batch-size", "8"]
    args += ["--corruptions", "gaussian_noise,contrast", "--severities", "2,4", "--perturbations", "gaussian_noise"]
    args += ["--shift", "2", "--shift-passes", "2", "--device", "cpu", "--json"]
    code, out, err = cli(*args)
    assert code == 0, err
    one = json.loads(out)
    proc = torchrun(*args, port=29541)
    assert proc.returncode == 0, proc.stderr[-2000:]
    two = json.loads(proc.stdout)
    for a, b in zip(one["results"], two["results"]):
        for key in ("clean_error", "corruptions", "perturbations", "shift", "images"):
            assert a["robustness"][key] == b["robustness"][key], key
    assert [c["robustness.corruption_accuracy"]["difference"] for c in one["comparisons"]] == [
        c["robustness.corruption_accuracy"]["difference"] for c in two["comparisons"]
    ]


@pytest.mark.filterwarnings("ignore:.*random weights")
def test_large_photos_use_the_imagenet_table_and_zhang_crops(photos):
    """Photos at a large input size: the ImageNet table, Zhang's two-crop protocol on a (H+2S)² canvas (resize
    to H+2S, centre crop), and the models see the photo through their own library transform's geometry."""
    doc = api.evaluate(
        ["timm:resnet10t"],
        f"folder:{photos}:val",
        metrics=["robustness"],
        input_size="3x96x96",
        num_classes=2,
        allow_class_mismatch=True,
        device="cpu",
        corruptions="contrast,glass_blur,jpeg_compression",
        severities="1,3",
        perturbations="translate",
        shift=4,
        shift_passes=1,
    )
    proto = doc["robustness_protocol"]
    assert proto["table"] == "imagenet" and proto["shift"]["protocol"] == "large"
    assert proto["shift_canvas"]["input_size"] == [3, 104, 104] and proto["shift_canvas"]["crop_pct"] == 1.0
    assert proto["pixels"]["input_size"] == [3, 96, 96] and proto["pixels"]["mean"] is None
    r = doc["results"][0]["robustness"]
    assert r["images"] == 12 and r["shift"]["diagonal_shift"] == list(range(-4, 5))  # from the centre window
    assert 0 <= r["shift"]["consistency"] <= 1
    assert proto["perturbation_parameters"]["translate"]  # the ImageNet-P parameters recorded


def test_baseline_model_joins_every_family(tmp_path):
    """A --baseline model that is not among the models is evaluated for every requested family, as a model of
    its own marked as the baseline."""
    doc = api.evaluate(
        [str(CNN)],
        "digits:test",
        metrics=["classification", "robustness"],
        baseline=f"{RESNET.parent}/./{RESNET.name}",  # the same file by another path is recognised too
        **SMALL,
        **PLAN,
        shift="none",
    )
    model, base = doc["results"]
    assert base["role"] == "baseline" and "top1" in base and "robustness" in base
    again = api.evaluate(
        [str(CNN), str(RESNET)],
        "digits:test",
        metrics=["robustness"],
        baseline=str(RESNET),
        **SMALL,
        **PLAN,
        shift="none",
    )
    assert len(again["results"]) == 2 and again["results"][1]["role"] == "baseline"


def test_a_perturbation_only_report_is_a_baseline(tmp_path):
    report = tmp_path / "p.json"
    one = _robust([RESNET], corruptions="none", shift="none")
    report.write_text(json.dumps(one))
    doc = _robust([CNN], corruptions="none", shift="none", baseline=str(report))
    p = doc["results"][0]["robustness"]["perturbations"]
    base = one["results"][0]["robustness"]["perturbations"]["flip_probability"]["translate"]
    assert p["flip_rate"]["translate"] == (pytest.approx(p["flip_probability"]["translate"] / base) if base else None)
    assert doc["robustness_protocol"]["baseline_values"]["flip_probability"] == {"translate": base}
