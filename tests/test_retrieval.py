"""Retrieval metrics against pytorch-metric-learning's AccuracyCalculator (the reference implementation of
the DML definitions) and a float64 brute force, on both protocols, both distances, lone labels and chunking."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from poolcli.metrics.retrieval import kmeans_labels, retrieval_metrics

PML = {
    "precision_at_1": "precision_at_1",
    "r_precision": "r_precision",
    "map_at_r": "mean_average_precision_at_r",
    "map": "mean_average_precision",
    "mrr": "mean_reciprocal_rank",
    "nmi": "NMI",
    "ami": "AMI",
}


def _clustered(n=300, d=16, classes=7, seed=0, spread=1.2):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=g)
    centres = torch.randn(classes, d, generator=g)
    return centres[labels] + spread * torch.randn(n, d, generator=g), labels


def _pml(query, ql, gallery, gl, distance, seed):
    acc = pytest.importorskip("pytorch_metric_learning.utils.accuracy_calculator")
    from pytorch_metric_learning.distances import CosineSimilarity, LpDistance
    from pytorch_metric_learning.utils.inference import CustomKNN

    dist = CosineSimilarity() if distance == "cosine" else LpDistance(normalize_embeddings=False, power=2)
    if distance == "cosine":  # PML's advice for cosine retrieval; k-means then runs on the unit vectors as ours
        query = torch.nn.functional.normalize(query, dim=1)
        gallery = None if gallery is None else torch.nn.functional.normalize(gallery, dim=1)
    calc = acc.AccuracyCalculator(
        include=tuple(PML.values()),
        knn_func=CustomKNN(dist),
        kmeans_func=lambda x, n: torch.as_tensor(kmeans_labels(x, n, seed)),
        device=torch.device("cpu"),
    )
    if gallery is None:
        return calc.get_accuracy(query, ql)
    return calc.get_accuracy(query, ql, gallery, gl, ref_includes_query=False)


def _brute_recall(query, ql, gallery, gl, k, loo, distance):
    q, g = query.double(), gallery.double()
    if distance == "cosine":
        q, g = torch.nn.functional.normalize(q, dim=1), torch.nn.functional.normalize(g, dim=1)
        d = -(q @ g.t())
    else:
        d = torch.cdist(q, g) ** 2
    if loo:
        d.fill_diagonal_(math.inf)
    nn_labels = gl[d.argsort(dim=1)[:, :k]]
    counts = torch.stack([(gl == y).sum() - (1 if loo else 0) for y in ql])
    keep = counts > 0
    return float((nn_labels == ql[:, None]).any(1)[keep].double().mean())


@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
@pytest.mark.parametrize("protocol", ["loo", "query-gallery"])
def test_every_metric_equals_accuracy_calculator(distance, protocol):
    x, y = _clustered(seed=1)
    y[:3] = torch.tensor([20, 21, 22])  # lone labels: left out of the ranking metrics, counted
    if protocol == "loo":
        q, ql, g, gl = x, y, None, None
    else:
        q, ql, g, gl = x[:120], y[:120], x[120:], y[120:]
    ours = retrieval_metrics(q, ql, g, gl, distance=distance, seed=3, max_bytes=4096)  # many small chunks
    ref = _pml(q, ql, g, gl, distance, seed=3)
    for name, theirs in PML.items():
        assert ours.metrics[name] == pytest.approx(ref[theirs], abs=1e-6), name
    assert ours.lone == (3 if protocol == "loo" else int((~torch.isin(ql, gl)).sum()))
    for k in (1, 2, 4, 8):
        want = _brute_recall(q, ql, x if g is None else g, y if gl is None else gl, k, g is None, distance)
        assert ours.metrics[f"recall_at_{k}"] == pytest.approx(want, abs=1e-12)
    assert ours.metrics["recall_at_1"] == ours.metrics["precision_at_1"]


def test_chunking_and_depth_do_not_change_the_numbers():
    x, y = _clustered(n=257, seed=4)
    one = retrieval_metrics(x, y, max_bytes=1 << 30, clustering=False)
    many = retrieval_metrics(x, y, max_bytes=2000, clustering=False)
    top = retrieval_metrics(x, y, full_map=False, clustering=False)  # only the top max(R_q, K) ranked
    assert one.metrics == many.metrics
    for k in (1, 2, 4, 8):
        assert one.recall_curve[k] == pytest.approx(one.metrics[f"recall_at_{k}"], abs=1e-12)
    assert max(one.recall_curve) == 256 and one.recall_curve[256] >= one.recall_curve[128]  # depth 256 = 257 − self
    for name in ("precision_at_1", "r_precision", "map_at_r", "recall_at_8"):
        assert top.metrics[name] == one.metrics[name]
    assert "map" not in top.metrics and "mrr" not in top.metrics
    assert one.protocol["chunk_queries"] > many.protocol["chunk_queries"] == 1


def test_known_answers_on_a_hand_built_ranking():
    """Four points on a line, labels a a b a: distances decide the ranking by hand."""
    x = torch.tensor([[0.0], [1.0], [2.5], [4.0]])
    y = torch.tensor([0, 0, 1, 0])
    res = retrieval_metrics(x, y, distance="euclidean", clustering=False, recall_k=(1, 2))
    # query 0: 1(a) 2(b) 3(a), R=2: P@1=1, RP=1/2, AP@R=(1)/2, AP=(1 + 2/3)/2
    # query 1: 0(a) 2(b) 3(a) [0 at 1.0, 2 at 1.5]: same as query 0
    # query 3: 2(b) 1(a) 0(a), R=2: P@1=0, RP=1/2, AP@R=(1/2)/2, AP=(1/2 + 2/3)/2
    # query 2 (b) is lone: excluded
    assert res.lone == 1
    assert res.metrics["precision_at_1"] == pytest.approx(2 / 3)
    assert res.metrics["r_precision"] == pytest.approx(1 / 2)
    assert res.metrics["map_at_r"] == pytest.approx((0.5 + 0.5 + 0.25) / 3)
    assert res.metrics["map"] == pytest.approx(((1 + 2 / 3) / 2 * 2 + (0.5 + 2 / 3) / 2) / 3)
    assert res.metrics["mrr"] == pytest.approx((1 + 1 + 0.5) / 3)
    assert res.metrics["recall_at_2"] == 1.0


def test_duplicates_under_other_indices_are_not_excluded():
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.1, 1.0]])
    y = torch.tensor([0, 1, 1, 0])  # image 1 duplicates image 0 under another label
    res = retrieval_metrics(x, y, clustering=False, recall_k=(1,))
    assert res.per_query["precision_at_1"][0] == 0.0  # its nearest is the duplicate, not itself


def test_evaluate_retrieval_from_the_cli(cli, tmp_path):
    """One pass feeds classification and retrieval; the JSON states the protocol; @global is the pre-logits
    of the fixture (fc's input is the flattened global pool); a gallery switches to the query/gallery protocol."""
    import json

    from .conftest import CNN

    args = ("evaluate", CNN, "--data", "digits:test", "--max-per-class", "12", "--json")
    code, out, err = cli(*args, "--metrics", "classification,retrieval")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["schema"] == "poolcli.evaluate/3" and doc["metrics"] == ["classification", "retrieval"]
    r = doc["results"][0]
    assert "top1" in r and r["n"] == 120
    ret = r["retrieval"]
    assert ret["protocol"] == "leave-one-out" and ret["queries"] == 120 and ret["embedding_dim"] == 512
    assert ret["embedding"].startswith("pre-logits") and 0 < ret["map_at_r"] <= ret["map"] <= 1
    code, out, _ = cli(*args, "--metrics", "retrieval", "--embed-site", "@global")
    same = json.loads(out)["results"][0]["retrieval"]
    assert "top1" not in json.loads(out)["results"][0]
    for name in ("precision_at_1", "map_at_r", "map", "recall_at_8"):
        assert same[name] == ret[name]
    code, out, err = cli(*args, "--metrics", "retrieval", "--gallery", "digits:train", "--distance", "euclidean")
    assert code == 0, err
    qg = json.loads(out)["results"][0]["retrieval"]
    assert qg["protocol"] == "query-gallery" and qg["gallery"] == 120 and qg["distance"] == "euclidean"
    code, out, err = cli(*args, "--metrics", "retrieval", "--ranking", "top")
    top = json.loads(out)["results"][0]["retrieval"]
    assert "map" not in top and top["map_at_r"] == ret["map_at_r"] and top["ranking_depth"].startswith("top")


def test_evaluate_refuses_what_retrieval_cannot_do(cli):
    from .conftest import CNN

    base = ("evaluate", CNN, "--data", "digits:test")
    code, _, err = cli(*base, "--metrics", "retrieval", "--max-per-class", "1")
    assert code == 2 and "≥ 2 images per class" in err
    code, _, err = cli(*base, "--metrics", "ranking")
    assert code == 2 and "unknown metric family" in err
    code, _, err = cli(*base, "--gallery", "digits:train")
    assert code == 2 and "--metrics retrieval" in err
    code, _, err = cli(*base, "--metrics", "retrieval", "--recall-k", "0,2")
    assert code == 2 and "--recall-k" in err


def test_a_model_without_an_embedding_names_embed_site():
    from torch import nn

    import poolcli
    from poolcli.errors import BadInputError

    model = nn.Sequential(nn.Conv2d(1, 10, 8), nn.Flatten())  # no Linear head, no global pool
    with pytest.raises(BadInputError, match="--embed-site"):
        poolcli.evaluate(
            [model], "digits:test", metrics=["retrieval"], max_per_class=5, device="cpu", input_size=(1, 8, 8)
        )


def test_torchrun_two_ranks_give_the_one_process_numbers(cli, tmp_path):
    """2 CPU ranks split the images, gather logits and embeddings and replay them in dataset order: every
    metric family equals one process's; rank 0 alone prints the JSON."""
    import json

    from .conftest import CNN, torchrun

    args = ["evaluate", str(CNN), "--max-per-class", "15", "--batch-size", "16", "--json"]
    args += ["--metrics", "classification,retrieval,separability", "--device", "cpu"]
    code, out, err = cli(*args)
    assert code == 0, err
    one = json.loads(out)["results"][0]
    proc = torchrun(*args, port=29531)
    assert proc.returncode == 0, proc.stderr[-2000:]
    docs = [line for line in proc.stdout.splitlines() if line.startswith("{")] or [proc.stdout]
    two = json.loads(proc.stdout)["results"][0]
    assert len(docs) == 1
    for key in ("top1", "macro_accuracy", "ece", "confusion", "n"):
        assert two[key] == one[key], key
    assert two["loss"] == pytest.approx(one["loss"], rel=1e-12)
    for key in ("precision_at_1", "map_at_r", "map", "recall_at_4", "nmi"):
        assert two["retrieval"][key] == one["retrieval"][key], key
    assert two["separability"]["eq8_ratio"] == pytest.approx(one["separability"]["eq8_ratio"], rel=1e-12)


def test_evaluate_plots(cli, tmp_path):
    """--plot DIR: Recall@K curves, a confusion matrix per model and the P-pooling α maps of a converted model."""
    import json

    from .conftest import CNN

    pp = tmp_path / "pp.safetensors"
    assert cli("convert", CNN, "--swap", "@down2=ppool", "-o", pp)[0] == 0
    folder = tmp_path / "plots"
    args = ("evaluate", CNN, pp, "--max-per-class", "8", "--metrics", "classification,retrieval", "--json")
    code, out, err = cli(*args, "--plot", folder)
    assert code == 0, err
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted(Path(p).name for p in json.loads(out)["plots"])
    assert "recall_at_k.png" in names and sum(n.startswith("confusion-") for n in names) == 2
    assert any(n.startswith("operator-2-") for n in names)
    assert all((folder / n).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for n in names)
    code, _, err = cli(*args, "--plot", folder / "recall_at_k.png")
    assert code == 2 and "give a folder" in err
    code, _, err = cli(*args, "--plot", tmp_path / "no" / "plots")
    assert code == 2 and "create it" in err


def test_query_and_gallery_with_disjoint_labels_are_refused():
    from torch.utils.data import TensorDataset

    import poolcli
    from poolcli.errors import BadInputError

    from .conftest import CNN

    g = torch.Generator().manual_seed(0)
    images = torch.rand(12, 1, 32, 32, generator=g)
    queries = TensorDataset(images[:6], torch.tensor([0, 0, 1, 1, 2, 2]))
    gallery = TensorDataset(images[6:], torch.tensor([3, 3, 4, 4, 5, 5]))
    with pytest.raises(BadInputError, match="must share classes"):
        poolcli.evaluate(
            [CNN], queries, metrics=["retrieval"], gallery=gallery, device="cpu", allow_class_mismatch=True
        )


def test_ties_across_the_cut_rank_by_index_in_both_paths():
    """Many exact duplicates: the top-K path's tie fallback and the whole ranking agree (ties by index)."""
    x, y = _clustered(n=120, seed=7)
    x = x.repeat_interleave(4, 0)[:120]  # groups of 4 identical embeddings
    whole = retrieval_metrics(x, y, clustering=False)
    top = retrieval_metrics(x, y, full_map=False, clustering=False)
    for name in ("precision_at_1", "r_precision", "map_at_r", "recall_at_2"):
        assert top.metrics[name] == whole.metrics[name], name
