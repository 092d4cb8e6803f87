"""evaluate's machinery: one pass per model feeding every metric family, sharded under torchrun, the
whitening of retrieval descriptors, and the paired comparison of models.

Under ``torchrun`` each rank runs the forward over its share of the images (image i on rank i mod world),
records each batch's logits, labels and embeddings, and the records are gathered and replayed through the
metric consumers in dataset order, in batches of the one-process batch size: every rank then holds the
numbers one process would compute (the float sums see the same batches), and rank 0 writes them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.data import Subset

from ..errors import BadInputError, RunError
from ..models.bundle import ModelBundle
from ..runtime import init_distributed, main_process


def model_pass(
    module: nn.Module,
    ds: Any,
    batch_size: int,
    workers: int,
    dev: torch.device,
    consumers: Sequence[Callable[[torch.Tensor, torch.Tensor], None]],
    box: dict,
    label: str,
) -> dict[str, float]:
    """:func:`poolcli.metrics.classification.run_pass` over ``ds``, or its sharded form under torchrun."""
    from ..data.specs import make_loader
    from ..metrics.classification import run_pass
    from ..progress import task

    rank, world = init_distributed()
    if world == 1:
        with task(label, len(ds)) as advance:
            return run_pass(module, make_loader(ds, batch_size, workers), dev, consumers, advance)
    import torch.distributed as dist

    mine = list(range(rank, len(ds), world))
    records: list = []

    def record(logits: torch.Tensor, y: torch.Tensor) -> None:
        emb = box.get("embedding")
        records.append((logits.detach().cpu(), y.cpu(), None if emb is None else emb.cpu()))

    info = {"forward_seconds": 0.0}
    with task(label, len(ds), scale=world) as advance:
        if mine:
            info = run_pass(module, make_loader(Subset(ds, mine), batch_size, workers), dev, [record], advance)
    part = (
        mine,
        torch.cat([r[0] for r in records]) if records else None,
        torch.cat([r[1] for r in records]) if records else None,
        torch.cat([r[2] for r in records]) if records and records[0][2] is not None else None,
        info["forward_seconds"],
    )
    parts: list = [None] * world
    dist.all_gather_object(parts, part)
    index = torch.tensor([i for p in parts for i in p[0]])
    order = index.argsort()
    logits = torch.cat([p[1] for p in parts if p[1] is not None])[order]
    labels = torch.cat([p[2] for p in parts if p[2] is not None])[order]
    embs = [p[3] for p in parts if p[3] is not None]
    emb = torch.cat(embs)[order] if embs else None
    for batch in torch.arange(len(ds)).split(batch_size):  # the one-process batches, in dataset order
        if emb is not None:
            box["embedding"] = emb[batch]
        for consume in consumers:
            consume(logits[batch], labels[batch])
    seconds = max(p[4] for p in parts)
    n = len(ds)
    return {"n": n, "images_per_s": n / seconds if seconds > 0 else float("inf"), "forward_seconds": seconds}


def compare_models(results: list[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    """Every pair of models on the same items: the paired bootstrap of each per-item score's difference
    (top-1 over images; P@1 and MAP@R over queries) and McNemar's exact test for top-1. Consumes the
    private per-item vectors of ``results``."""
    from ..metrics.paired import mcnemar_exact, paired_bootstrap

    vectors = [(r.pop("_paired", {}), r.pop("_items", None)) for r in results]
    out = []
    for i in range(len(results)):
        for j in range(i + 1, len(results)):
            (va, items_a), (vb, items_b) = vectors[i], vectors[j]
            if items_a is None or items_b is None or not torch.equal(items_a, items_b):
                continue  # not the same images in the same order: no paired comparison
            entry: dict[str, Any] = {"a": results[i]["model"], "b": results[j]["model"]}
            for name in va.keys() & vb.keys():
                entry[name] = paired_bootstrap(va[name].double(), vb[name].double(), seed=seed)
                if name == "top1":
                    entry[name] |= {"mcnemar": mcnemar_exact(va[name], vb[name])}
            out.append(entry)
    return out


def _whitening(bundle, whiten: dict[str, Any], run, opener, select, embeddings_of):
    """The whitening of ``whiten["source"]``: a saved file, or fitted now on that data spec's embeddings
    (and saved to ``whiten["save"]``)."""
    from ..metrics.whitening import fit_whitening, load_whitening, save_whitening

    source = str(whiten["source"])
    if source.endswith(".safetensors"):
        w = load_whitening(source)
        return w, {"file": source, "dim": w.dim}
    fit_ds = opener(source, "train", {"seed": select["seed"], "bad_images": select["bad_images"]})
    store: list = []
    run(fit_ds, [embeddings_of(store)], f"whitening fit {bundle.spec}")
    w = fit_whitening(torch.cat([e for e, _ in store]), whiten.get("dim"))
    info = {"fitted_on": source, "images": len(fit_ds), "dim": w.dim, "method": "L2, PCA-whitening, L2"}
    if whiten.get("save") is not None and main_process():  # under torchrun rank 0 writes
        save_whitening(whiten["save"], w, {"model": bundle.spec, **info})
        info["saved"] = str(whiten["save"])
    return w, info


RETRIEVAL_DEFINITIONS = {
    "precision_at_1": "fraction of queries whose nearest gallery item (self excluded by index) has their label; "
    "the DML papers' Recall@1",
    "recall_at_K": "fraction of queries with at least one same-label item among their K nearest (Song et al. 2016)",
    "r_precision": "mean over queries of (same-label items among the R_q nearest) / R_q, R_q = same-label gallery "
    "items (minus the query itself in leave-one-out)",
    "map_at_r": "mean over queries of (1/R_q) Σ_{i≤R_q} P(i)·rel(i) (Musgrave et al. 2020)",
    "map": "mean over queries of (1/R_q) Σ_i P(i)·rel(i) over the whole ranking (AccuracyCalculator's "
    "mean_average_precision with k = all)",
    "mrr": "mean over queries of 1 / rank of the first same-label item",
    "nmi_ami": "scikit-learn NMI (arithmetic) and AMI of k-means clusters (as many as query labels, n_init=1, the "
    "recorded seed) of the query embeddings",
    "lone_queries_excluded": "queries whose label has no other gallery item: left out of the ranking metrics",
}


def evaluate_one(
    bundle: ModelBundle,
    ds: Any,
    gallery: Any,
    families: list[str],
    dev: torch.device,
    batch_size: int,
    workers: int,
    select: dict[str, Any],
    opener: Callable[[Any, str, dict[str, Any]], Any],
    *,
    embed_site: str | None,
    distance: str,
    recall_k: list[int],
    full_map: bool,
    seed: int,
    whiten: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One pass of ``bundle`` over ``ds`` (and one over ``gallery``) feeding the requested families; under
    torchrun every rank runs its share of the images and all ranks get the one-process numbers.
    ``opener(spec, split, selection)`` opens the gallery and whitening data for this model."""
    from ..metrics.classification import Classification
    from ..metrics.retrieval import retrieval_metrics
    from ..metrics.separability import Separability
    from ..models.embed import capture_embeddings, find_embedding

    out: dict[str, Any] = {}
    consumers = []
    acc = Classification() if "classification" in families else None
    if acc is not None:
        consumers.append(acc.update)
    retrieval = "retrieval" in families
    embedded = retrieval or "separability" in families
    tap = find_embedding(bundle, embed_site) if embedded else None
    with capture_embeddings(bundle.module, tap) if embedded else contextlib.nullcontext({}) as box:

        def embeddings_of(store: list):
            return lambda logits, y: store.append((box["embedding"].cpu(), y.cpu()))

        queries: list = []
        if retrieval:
            consumers.append(embeddings_of(queries))
        sep = Separability(torch.bincount(ds.labels)) if "separability" in families else None
        if sep is not None:
            consumers.append(lambda logits, y: sep.update(box["embedding"], y))

        def run(dataset, eat, label):
            return model_pass(bundle.module, dataset, batch_size, workers, dev, eat, box, label)

        out |= run(ds, consumers, f"evaluate {bundle.spec}")
        if acc is not None:
            out |= acc.result()
            out["_paired"] = {"top1": torch.cat(acc.correct)}
            out["_items"] = torch.cat([y for y in acc.labels])
        if sep is not None:
            out["separability"] = {**sep.result(), "embedding": tap.description}
        if not retrieval:
            return out
        gal: list = []
        if gallery is not None:
            run(opener(gallery, "test", select), [embeddings_of(gal)], f"gallery {bundle.spec}")
        white, white_info = None, None
        if whiten is not None:
            white, white_info = _whitening(bundle, whiten, run, opener, select, embeddings_of)
    q_emb, q_lab = torch.cat([e for e, _ in queries]), torch.cat([y for _, y in queries])
    g_emb = torch.cat([e for e, _ in gal]) if gal else None
    g_lab = torch.cat([y for _, y in gal]) if gal else None
    if white is not None:
        q_emb = white.apply(q_emb)
        g_emb = white.apply(g_emb) if g_emb is not None else None
    try:
        res = retrieval_metrics(
            q_emb, q_lab, g_emb, g_lab, recall_k=recall_k, distance=distance, full_map=full_map, seed=seed
        )
    except ValueError as e:
        raise RunError(f"retrieval of {bundle.spec}: {e}") from None
    if not bool(res.kept.any()):
        why = (
            "no query's label occurs in the gallery: query and gallery must share classes"
            if gallery is not None
            else "every class has a single image, so no query has a match: retrieval needs ≥ 2 images per class "
            "(raise --max-per-class or --limit)"
        )
        raise BadInputError(why)
    paired = out.setdefault("_paired", {})
    paired |= {f"retrieval.{k}": res.per_query[k] for k in ("precision_at_1", "map_at_r")}
    out["_items"] = torch.cat([q_lab, g_lab]) if g_lab is not None else q_lab
    out["retrieval"] = {
        **res.metrics,
        "embedding": tap.description,
        "embedding_dim": int(q_emb.shape[1]),
        "embeddings_bytes": int(q_emb.numel() * 4 + (g_emb.numel() * 4 if g_emb is not None else 0)),
        "whitening": white_info,
        "recall_curve": {str(k): v for k, v in res.recall_curve.items()},
        **res.protocol,
    }
    return out
