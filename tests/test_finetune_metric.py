"""finetune with metric-learning losses (pytorch-metric-learning) on P×K batches: every loss learns an embedding
better than a random one, batches are class-balanced and seeded per epoch, the embedding head reloads and is
what evaluate's retrieval reads, ZSR combines convexly, resume stays bit-identical with trained proxies."""

from __future__ import annotations

import pytest
import torch

from poolcli import api
from poolcli.train.metric import LOSSES, pk_batches

from .conftest import CNN
from .test_finetune_resume import StopAt, interrupted_then_resumed

RUN = dict(data="digits:train", val="digits:test", limit=300, device="cpu", seed=1, from_scratch=True, lr=3e-3)
FAST = ("multisimilarity",)  # the rest in the slow suite (proxyanchor also in the resume test below)


@pytest.fixture(scope="module")
def random_map_at_r():
    """MAP@R of the re-initialised fixture's pre-logit embedding on digits:test (what training must beat)."""
    from poolcli.metrics.retrieval import retrieval_metrics
    from poolcli.models.embed import capture_embeddings, find_embedding
    from poolcli.pipeline.finetune import _reinitialise

    bundle = api.load_model(str(CNN))
    _reinitialise(bundle, seed=1)
    ds = api.open_data("digits:test", bundle)
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    with torch.no_grad(), capture_embeddings(bundle.module.eval(), find_embedding(bundle)) as box:
        bundle.module(x)
    return retrieval_metrics(box["embedding"], ds.labels, recall_k=[1], clustering=False).metrics["map_at_r"]


@pytest.mark.parametrize(
    "loss", [pytest.param(n, marks=() if n in FAST else pytest.mark.slow) for n in LOSSES if n != "ce"]
)
def test_every_loss_beats_a_random_embedding(loss, random_map_at_r):
    _, doc = api.finetune(str(CNN), epochs=2, loss=loss, **RUN)
    got = doc["final"]["val_map_at_r"]
    assert got > random_map_at_r + 0.05, (loss, got, random_map_at_r)
    assert doc["metric_learning"]["library"] == "pytorch-metric-learning" and "train_top1" not in doc["final"]


def test_pk_batches_are_balanced_and_seeded_per_epoch():
    labels = torch.tensor([c for c in range(6) for _ in range(5 + c)])
    a = pk_batches(labels, 3, 4, seed=0, epoch=0)
    assert len(a) == labels.numel() // 12 and all(len(b) == 12 for b in a)
    for b in a:
        counts = torch.bincount(labels[b], minlength=6)
        assert sorted(counts[counts > 0].tolist()) == [4, 4, 4]
    assert a == pk_batches(labels, 3, 4, seed=0, epoch=0)  # a pure function of (seed, epoch)
    assert a != pk_batches(labels, 3, 4, seed=0, epoch=1) and a != pk_batches(labels, 3, 4, seed=1, epoch=0)
    import numpy as np

    state = np.random.get_state()[1].copy()
    pk_batches(labels, 3, 4, seed=0, epoch=2)
    assert (np.random.get_state()[1] == state).all()  # the global numpy generator is left alone


def test_embedding_head_reloads_and_feeds_retrieval(tmp_path):
    out = tmp_path / "emb.safetensors"
    _, doc = api.finetune(str(CNN), output=out, epochs=1, loss="multisimilarity", embedding_dim=24, **RUN)
    bundle = api.load_model(str(out))
    assert bundle.extra["embedding_head"]["dim"] == 24 and bundle.classes is None
    ev = api.evaluate([str(out)], "digits:test", metrics=["retrieval"], allow_class_mismatch=True, device="cpu")
    r = ev["results"][0]["retrieval"]
    assert r["embedding_dim"] == 24 and r["embedding"].startswith("embedding head")
    assert r["map_at_r"] == pytest.approx(doc["final"]["val_map_at_r"], abs=1e-9)  # the same code, the same number


def test_metric_resume_with_proxies_is_bit_identical(tmp_path):
    kw = dict(epochs=2, loss="proxyanchor", embedding_dim=16, **{**RUN, "limit": 160})
    ref = tmp_path / "ref.safetensors"
    api.finetune(str(CNN), output=ref, **kw)
    assert interrupted_then_resumed(tmp_path / "job.safetensors", StopAt(2, 2), run={}, **kw) == ref.read_bytes()


def test_zsr_is_a_convex_combination_for_metric_losses(tmp_path):
    gsp = tmp_path / "gsp.safetensors"
    api.convert(str(CNN), ["@global=gsp:m=8"], output=gsp)
    _, doc = api.finetune(
        str(gsp), epochs=1, loss="multisimilarity", zsr_weight=0.1, **{**RUN, "from_scratch": False, "limit": 120}
    )
    assert doc["zsr_weight"] == 0.1 and doc["final"]["loss"] > 0
