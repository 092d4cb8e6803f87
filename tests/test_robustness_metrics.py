"""Robustness arithmetic: CE / relative CE on known tables, flip probability and top-5 distance on hand-built
sequences and against a loop written from the published evaluation script, baselines keyed by name, and the
readers of the published CIFAR-10-C / CIFAR-10-P arrays on tiny files in that layout."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy.stats import rankdata

from poolcli.data.published import CorruptionArrays, PerturbationArrays
from poolcli.errors import BadInputError
from poolcli.metrics import robustness as rm

NAMES = ("gaussian_noise", "shot_noise", "contrast", "brightness")


# ----------------------------------------------------------------------------- corruption error
def test_ce_and_relative_ce_on_a_known_table():
    errors = {
        "gaussian_noise": {1: 0.2, 2: 0.3, 3: 0.4, 4: 0.5, 5: 0.6},
        "contrast": {1: 0.1, 2: 0.1, 3: 0.2, 4: 0.2, 5: 0.4},
    }
    base = {
        "source": "b",
        "errors": {"gaussian_noise": {s: 0.5 for s in range(1, 6)}, "contrast": 0.4},  # contrast: a mean
        "clean_error": 0.1,
    }
    out = rm.corruption_summary(errors, 0.05, base, benchmark=("gaussian_noise", "contrast", "fog"))
    assert out["unnormalized_ce"]["gaussian_noise"] == pytest.approx(0.4)
    assert out["unnormalized_ce"]["contrast"] == pytest.approx(0.2)
    assert out["unnormalized_mce"] == pytest.approx(0.3)
    assert out["ce"]["gaussian_noise"] == pytest.approx(2.0 / 2.5)
    assert out["ce"]["contrast"] == pytest.approx(1.0 / 2.0)
    assert out["mce"] == pytest.approx((0.8 + 0.5) / 2)
    # relative: Σ(E − 0.05) / Σ(Eb − 0.1)
    assert out["relative_ce"]["gaussian_noise"] == pytest.approx((2.0 - 0.25) / (2.5 - 0.5))
    assert out["relative_ce"]["contrast"] == pytest.approx((1.0 - 0.25) / (2.0 - 0.5))
    assert out["benchmark_missing"] == ["fog"]


def test_ce_is_matched_by_name_never_position():
    errors = {"contrast": {s: 0.2 for s in range(1, 6)}, "gaussian_noise": {s: 0.4 for s in range(1, 6)}}
    base = {"source": "b", "errors": {"gaussian_noise": 0.8, "contrast": 0.1}, "clean_error": None}
    out = rm.corruption_summary(errors, None, base)
    assert out["ce"] == {"contrast": pytest.approx(2.0), "gaussian_noise": pytest.approx(0.5)}
    assert out["relative_ce"] == {"contrast": None, "gaussian_noise": None} and "relative_ce_undefined" in out


def test_ce_undefined_cases_say_why():
    errors = {"contrast": {1: 0.2, 3: 0.3}, "fog": {1: 0.5, 3: 0.5}}
    base = {"source": "b", "errors": {"contrast": 0.3}, "clean_error": 0.1}
    out = rm.corruption_summary(errors, 0.1, base)
    assert "contrast" not in out["ce"] and "evaluate all five" in out["ce_undefined"]["contrast"]
    assert "no error" in out["ce_undefined"]["fog"] and out["mce"] is None


def test_alexnet_table_is_keyed_by_the_published_names():
    assert len(rm.ALEXNET_IMAGENET_C) == 15
    assert rm.ALEXNET_IMAGENET_C["brightness"] == 0.564592 and rm.ALEXNET_IMAGENET_C["impulse_noise"] == 0.922640


# ----------------------------------------------------------------------------- flips, top-5 distance
def _published_flip_prob(predictions, noise):
    """The loop of ImageNet-P/cifar-p-eval.py's flip_prob with difficulty 1, written out."""
    result = 0.0
    for vid in predictions:
        prev, flips = vid[0], []
        for pred in vid[1:]:
            flips.append(int(prev != pred))
            if not noise:
                prev = pred
        result += np.mean(flips) / len(predictions)
    return result


def _published_top5(ranks, noise, k):
    """ImageNet-P/cifar-p-eval.py's ranking_dist(mode='top5') with difficulty 1, written out."""
    cum = np.cumsum(np.asarray([0] + [1] * 5 + [0] * (k - 1 - 5)))
    result = 0.0
    for vid in ranks:
        perm1 = vid[0]
        inv = np.argsort(perm1)
        dists = []
        for rank in vid[1:]:
            sigma = rank[inv]
            dists.append(np.sum(np.abs(cum[:5] - cum[sigma - 1][:5])))
            if not noise:
                perm1 = rank
                inv = np.argsort(perm1)
        result += np.mean(dists) / len(ranks)
    return result


def test_flip_probability_on_hand_built_sequences():
    k = 3
    preds = torch.tensor([[0, 0, 1, 1, 0], [2, 2, 2, 2, 2], [0, 1, 0, 1, 0]])
    logits = torch.nn.functional.one_hot(preds, k).float()
    consecutive, _ = rm.sequence_stability(logits, to_first=False)
    first, _ = rm.sequence_stability(logits, to_first=True)
    assert consecutive.tolist() == [2 / 4, 0.0, 4 / 4]
    assert first.tolist() == [2 / 4, 0.0, 2 / 4]  # against frame 0: 0,1,1,0 / 0,0,0,0 / 1,0,1,0


@pytest.mark.parametrize("noise", [False, True])
def test_flips_and_top5_distance_equal_the_published_loops(noise):
    g = torch.Generator().manual_seed(3 + noise)
    k = 10
    logits = torch.randn(7, 6, k, generator=g)
    logits[:, 2:4] = logits[:, 1:2]  # repeated frames: zero flips / distance there
    logits[0, :, :4] = 0.0  # ties: broken by class index, as scipy's ordinal ranking
    fp, t5 = rm.sequence_stability(logits, to_first=noise)
    preds = [v.argmax(1).numpy() for v in logits]
    ranks = np.asarray([[rankdata(-f, method="ordinal").astype(np.int64) for f in v.numpy()] for v in logits])
    assert float(fp.mean()) == pytest.approx(_published_flip_prob(preds, noise), abs=1e-12)
    assert float(t5.mean()) == pytest.approx(_published_top5(ranks, noise, k), abs=1e-12)


def test_top5_distance_known_values_and_small_class_counts():
    k = 8
    a = torch.arange(k, 0, -1).float()  # ranking 0,1,2,...
    b = a.clone()
    b[[0, 7]] = b[[7, 0]]  # class 0 drops from rank 0 to rank 7 (≥ 5: counted as 5), class 7 rises to rank 0
    _, t5 = rm.sequence_stability(torch.stack([a, b])[None], to_first=False)
    # reference top-5: classes 0..4 at positions 0..4; their new ranks 7,1,2,3,4 -> |0 - 5| = 5
    assert float(t5) == 5.0
    _, none = rm.sequence_stability(torch.randn(2, 3, 5), to_first=False)
    assert none is None  # fewer than 6 classes: the published table is undefined


def test_perturbation_summary_flip_rate():
    out = rm.perturbation_summary(
        {"translate": 0.1, "rotate": 0.3},
        {"translate": 1.0, "rotate": None},
        {"source": "b", "flip_probability": {"translate": 0.05, "rotate": 0.6}},
    )
    assert out["mean_flip_probability"] == pytest.approx(0.2)
    assert out["flip_rate"] == {"translate": pytest.approx(2.0), "rotate": pytest.approx(0.5)}
    assert out["mfr"] == pytest.approx(1.25) and out["mean_top5_distance"] == 1.0


def test_consistency():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    b = torch.tensor([[2.0, 0.0], [1.0, 0.0], [0.5, 0.0]])
    assert rm.consistency(a, b).tolist() == [1.0, 0.0, 1.0]


# ----------------------------------------------------------------------------- baselines
def test_load_baseline_file_forms(tmp_path):
    f = tmp_path / "b.json"
    f.write_text(
        json.dumps(
            {
                "corruptions": {"gaussian_noise": [0.1, 0.2, 0.3, 0.4, 0.5], "contrast": 0.3, "fog": {"1": 0.2}},
                "clean_error": 0.05,
                "flip_probability": {"translate": 0.02},
            }
        )
    )
    b = rm.load_baseline(f, ("gaussian_noise", "contrast", "fog"), ("translate",))
    assert b["errors"]["gaussian_noise"][3] == 0.3 and b["errors"]["contrast"] == 0.3 and b["errors"]["fog"] == {1: 0.2}
    assert b["clean_error"] == 0.05 and b["flip_probability"] == {"translate": 0.02}
    assert rm.load_baseline("alexnet-imagenet-c", ())["errors"]["fog"] == 0.819324


@pytest.mark.parametrize(
    "content, words",
    [
        ("{", "not JSON"),
        ('{"corruptions": {"gausian_noise": 0.3}}', "unknown corruption"),
        ('{"corruptions": {"contrast": [0.1, 0.2]}}', "give 5"),
        ('{"corruptions": {"contrast": 1.5}}', "error rate"),
        ('{"corruptions": {"contrast": {"7": 0.1}}}', "severities are 1-5"),
        ('{"corruptions": {}}', "holds no"),
        ("[1, 2]", "expected an object"),
        ('{"corruptions": {"contrast": NaN}}', "error rate"),
    ],
)
def test_bad_baseline_files(tmp_path, content, words):
    f = tmp_path / "b.json"
    f.write_text(content)
    with pytest.raises(BadInputError, match=words):
        rm.load_baseline(f, ("contrast", "gaussian_noise"))


# ----------------------------------------------------------------------------- published arrays
def _cifar10c(folder, n=6, names=("gaussian_noise", "contrast")):
    folder.mkdir(exist_ok=True)
    labels = np.arange(n) % 3
    np.save(folder / "labels.npy", np.tile(labels, 5).astype(np.uint8))
    rng = np.random.default_rng(0)
    for name in names:
        arr = rng.integers(0, 256, (5 * n, 8, 8, 3), dtype=np.uint8)
        np.save(folder / f"{name}.npy", arr)
    return folder


def test_cifar10c_reader_layout(tmp_path):
    d = _cifar10c(tmp_path / "c")
    np.save(d / "unrelated.npy", np.zeros(3))
    a = CorruptionArrays(d, NAMES)
    assert a.n == 6 and a.names == ("gaussian_noise", "contrast") and a.ignored == ["unrelated.npy"]
    assert a.labels.tolist() == [0, 1, 2, 0, 1, 2]
    raw = np.load(d / "contrast.npy")
    got = a.images("contrast", 3, torch.tensor([1, 4]))
    assert got.shape == (2, 3, 8, 8) and got.dtype == torch.uint8
    assert torch.equal(got[1], torch.from_numpy(raw[2 * 6 + 4]).permute(2, 0, 1))  # severity 3 = third block


def test_cifar10p_reader_layout(tmp_path):
    d = tmp_path / "p"
    d.mkdir()
    seqs = np.random.default_rng(1).integers(0, 256, (4, 5, 8, 8, 3), dtype=np.uint8)
    np.save(d / "translate.npy", seqs)
    a = PerturbationArrays(d, ("translate", "rotate"))
    assert a.n == 4 and a.frames == {"translate": 5} and not a.has_labels
    got = a.sequences("translate", torch.tensor([2]))
    assert got.shape == (1, 5, 3, 8, 8) and torch.equal(got[0, 3], torch.from_numpy(seqs[2, 3]).permute(2, 0, 1))


@pytest.mark.parametrize(
    "breaker, words",
    [
        (lambda d: np.save(d / "labels.npy", np.arange(7)), "not 5 blocks"),
        (lambda d: np.save(d / "labels.npy", np.arange(30)), "different labels"),
        (lambda d: np.save(d / "contrast.npy", np.zeros((30, 8, 8, 3), dtype=np.float32)), "uint8"),
        (lambda d: np.save(d / "contrast.npy", np.zeros((25, 8, 8, 3), dtype=np.uint8)), "holds 25 images"),
        (lambda d: (d / "contrast.npy").write_bytes(b"not an array"), "not a readable"),
        (
            lambda d: np.save(d / "contrast.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True),
            "not a readable",
        ),
        (lambda d: (d / "labels.npy").unlink(), "labels.npy not found"),
        (lambda d: np.save(d / "labels.npy", np.tile(np.arange(6) - 1, 5)), "negative"),
    ],
)
def test_cifar10c_reader_refuses_bad_files(tmp_path, breaker, words):
    d = _cifar10c(tmp_path / "c")
    breaker(d)
    with pytest.raises(BadInputError, match=words):
        CorruptionArrays(d, NAMES)
