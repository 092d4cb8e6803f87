"""Retrieval of unseen classes from embeddings: the deep-metric-learning measures, exact, in bounded memory.

Protocols (Musgrave, Belongie & Lim, "A Metric Learning Reality Check", ECCV 2020; Song et al., CVPR 2016):
* leave-one-out on one set (CUB-200, Cars-196, SOP): every image is a query against all the others; the
  query itself is excluded **by index** (an exact duplicate stored under another index is not excluded);
* separate query and gallery sets (In-Shop): nothing is excluded.

Definitions, as pytorch-metric-learning's ``AccuracyCalculator`` (v2.x) computes them. For query q with
label y_q, n_i(q) its i-th nearest gallery item (self excluded), rel_q(i) = 1[y(n_i(q)) = y_q],
R_q = the number of gallery items with label y_q (minus one in leave-one-out), P_q(i) = (1/i) Σ_{j≤i} rel_q(j):
* ``precision_at_1`` = mean_q rel_q(1) (the DML papers' Recall@1);
* ``recall_at_k`` = mean_q 1[∃ i ≤ K: rel_q(i)] (Song et al.; not IR recall);
* ``r_precision`` = mean_q Σ_{i≤R_q} rel_q(i) / R_q;
* ``map_at_r`` = mean_q (1/R_q) Σ_{i≤R_q} P_q(i) rel_q(i);
* ``map`` = mean_q (1/R_q) Σ_{i≤N} P_q(i) rel_q(i) over the whole ranking (``AccuracyCalculator``'s
  ``mean_average_precision`` with its default k = all references);
* ``mrr`` = mean_q 1 / (rank of the first relevant item) (with ``map``: both need the whole ranking);
* ``nmi`` / ``ami``: k-means (scikit-learn, ``n_init=1``, the recorded seed) on the query embeddings (L2-
  normalised for cosine, as pytorch-metric-learning advises for cosine retrieval) with as many clusters as
  query labels, scored by scikit-learn's NMI (arithmetic normalisation) and AMI.
Queries whose label has no other instance in the gallery ("lone") are left out of the ranking metrics and
counted; NMI/AMI use every query.

Ranking: cosine similarity of L2-normalised embeddings (default) or Euclidean distance, float32 products;
ties are broken by gallery index (stable sort), so results do not depend on the device or the chunking.
Queries are processed in chunks whose similarity rows fit ``max_bytes``: memory is O(chunk · N_gallery),
never N×N.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import torch

DISTANCES = ("cosine", "euclidean")
RANKING_METRICS = ("precision_at_1", "r_precision", "map_at_r", "map", "mrr")
# bytes per (query, gallery item) entry of a chunk, all reused buffers: the similarity (4), the sort's values
# and indices (4 + 8), the gallery labels (8), the match (1), its cumulative count (8), P(i)·rel(i) (8), a
# mask (1), and the sort's work space; measured peak RSS rise of the whole-ranking path at N = 10k:
# 129 MiB for chunks of 2.4M entries with 112 here, i.e. ~56 per entry including the data
BYTES_PER_ENTRY = 64
# the top-K path keeps only the similarities (4), a mask (1) and topk's work space per entry (measured
# peak 0.08 GiB at 10k with 64 here: about 20 per entry)
BYTES_PER_ENTRY_TOP = 24


@dataclasses.dataclass
class RetrievalResult:
    metrics: dict[str, float]  # the means (recall_at_k as ``recall_at_{K}``), nmi, ami
    recall_curve: dict[int, float]  # Recall@K at K = 1, 2, 4, … up to the ranked depth (at most 1024)
    per_query: dict[str, torch.Tensor]  # float64 [kept queries] per ranking metric: for paired statistics
    kept: torch.Tensor  # bool [queries]: not lone
    protocol: dict

    @property
    def lone(self) -> int:
        return int((~self.kept).sum())


def normalise(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x.float(), dim=1)


def chunk_rows(gallery_size: int, max_bytes: int, per_entry: int = BYTES_PER_ENTRY) -> int:
    """Queries per chunk so that one chunk's similarity rows and their sort fit ``max_bytes``."""
    return max(1, min(65536, int(max_bytes) // max(1, gallery_size * per_entry)))


def retrieval_metrics(
    query: torch.Tensor,
    query_labels: torch.Tensor,
    gallery: torch.Tensor | None = None,
    gallery_labels: torch.Tensor | None = None,
    *,
    recall_k: Sequence[int] = (1, 2, 4, 8),
    distance: str = "cosine",
    full_map: bool = True,
    clustering: bool = True,
    seed: int = 0,
    max_bytes: int = 256 << 20,
) -> RetrievalResult:
    """The retrieval metrics of ``query`` embeddings [Q, d] against ``gallery`` [G, d] (None: leave-one-out on
    the queries). ``full_map``: also MAP over the whole ranking (sorts every similarity row; without it
    only the top max(R_q, K) neighbours are ranked). ``max_bytes``: memory of one chunk of similarity rows."""
    if distance not in DISTANCES:
        raise ValueError(f"distance must be one of {', '.join(DISTANCES)}, not {distance!r}")
    from ..runtime import bound_allocator

    bound_allocator()  # the chunks' temporaries go back to the OS, so the budget bounds the peak
    loo = gallery is None
    if loo:
        gallery, gallery_labels = query, query_labels
    if gallery_labels is None:
        raise ValueError("gallery embeddings need gallery labels")
    query_labels = query_labels.long().cpu()
    gallery_labels = gallery_labels.long().cpu()
    q = normalise(query) if distance == "cosine" else query.float()
    g = normalise(gallery) if distance == "cosine" else gallery.float()
    if not (bool(torch.isfinite(q).all()) and bool(torch.isfinite(g).all())):
        raise ValueError("the embeddings hold NaN/inf values: check the model's weights and the images")
    if q.shape[1] != g.shape[1]:
        raise ValueError(f"query embeddings have {q.shape[1]} dimensions, gallery ones {g.shape[1]}")
    ks = sorted({int(k) for k in recall_k})
    if not ks or ks[0] < 1:
        raise ValueError("recall@K needs K ≥ 1")
    n_g = g.shape[0]
    g_sq = (g * g).sum(1) if distance == "euclidean" else None
    # R_q: same-label gallery items (minus the query itself in leave-one-out)
    labels_all = torch.cat([query_labels, gallery_labels])
    _, inverse = labels_all.unique(return_inverse=True)
    q_ids, g_ids = inverse[: len(query_labels)], inverse[len(query_labels) :]
    counts = torch.bincount(g_ids, minlength=int(inverse.max()) + 1)
    r = counts[q_ids] - (1 if loo else 0)
    kept = r > 0
    depth = n_g - (1 if loo else 0)  # the whole ranking
    need = depth if full_map else min(depth, max(int(r.max()) if len(r) else 1, ks[-1]))
    whole = need == depth or full_map
    per_entry = BYTES_PER_ENTRY if whole else BYTES_PER_ENTRY_TOP
    chunk = min(chunk_rows(n_g, max_bytes, per_entry), max(1, int(kept.sum())))
    per = {name: [] for name in RANKING_METRICS if full_map or name not in ("map", "mrr")}
    hits = {k: [] for k in ks}
    curve_ks = [1 << i for i in range(11) if (1 << i) <= need]
    curve = {k: 0.0 for k in curve_ks}
    rows = kept.nonzero().squeeze(1)
    g_dev = g.to(q.device)
    # every per-chunk array is allocated once and reused (``out=``): no fresh large blocks per chunk, which
    # the C allocator would keep after freeing (docs/BENCHMARKS.md, retrieval memory)
    width = n_g if whole else need  # the whole ranking keeps the self's column (last, never a match): no slicing
    sims = torch.empty(chunk, n_g, device=g_dev.device)
    if whole:
        sorted_vals = torch.empty_like(sims)
        sorted_idx = torch.empty(chunk, n_g, dtype=torch.long, device=g_dev.device)
    lab = torch.empty(chunk, width, dtype=torch.long)
    hit = torch.empty(chunk, width, dtype=torch.bool)
    cum = torch.empty(chunk, width, dtype=torch.long)
    ap = torch.empty(chunk, width, dtype=torch.float64)
    mask = torch.empty(chunk, width, dtype=torch.bool)
    ranks = torch.arange(1, width + 1, dtype=torch.float64)
    top_bufs = (
        ()
        if whole
        else (
            torch.empty(chunk, need + 1, device=g_dev.device),
            torch.empty(chunk, need + 1, dtype=torch.long, device=g_dev.device),
        )
    )
    for start in range(0, len(rows), chunk):
        idx = rows[start : start + chunk]
        c = len(idx)
        s = sims[:c]
        torch.mm(q[idx], g_dev.t(), out=s)
        if distance == "euclidean":  # −‖q − g‖² up to the per-row constant ‖q‖², which keeps the ranking
            s.mul_(2).sub_(g_sq[None, :])
        if loo:
            s[torch.arange(c), idx] = -math.inf  # the query itself, by index: ranked last, then cut
        if whole:
            torch.sort(s, dim=1, descending=True, stable=True, out=(sorted_vals[:c], sorted_idx[:c]))
            order = sorted_idx[:c]
        else:
            order = _top(s, need, top_bufs)
        torch.take(g_ids, order.cpu(), out=lab[:c])
        m = torch.eq(lab[:c], q_ids[idx][:, None], out=hit[:c])  # rel_q(i)
        if whole and loo:
            m[:, -1] = False  # the query itself, ranked last: not part of its ranking
        cu = torch.cumsum(m, 1, dtype=torch.long, out=cum[:c])
        rq = r[idx]
        per["precision_at_1"].append(m[:, 0].double())
        per["r_precision"].append(cu.gather(1, (rq - 1).clamp(max=need - 1)[:, None]).squeeze(1).double() / rq)
        for k in ks:
            hits[k].append((cu[:, min(k, need) - 1] > 0).double())
        for k in curve_ks:
            curve[k] += float((cu[:, k - 1] > 0).sum())
        if "mrr" in per:  # the first relevant item may lie beyond R_q: exact on the whole ranking only
            first = torch.eq(cu, 0, out=mask[:c]).sum(1) + 1.0  # leading ranks without a match, plus one
            per["mrr"].append(torch.where(cu[:, -1] > 0, 1.0 / first, torch.zeros_like(first)))
        a = torch.div(cu, ranks, out=ap[:c]).mul_(m)  # P_q(i)·rel_q(i)
        if "map" in per:
            per["map"].append(a.sum(1) / rq)
        a.mul_(torch.le(ranks[None, :], rq[:, None].double(), out=mask[:c]))  # only i ≤ R_q
        per["map_at_r"].append(a.sum(1) / rq)
    cat = {name: torch.cat(v) if v else torch.empty(0, dtype=torch.float64) for name, v in per.items()}
    for k in ks:
        cat[f"recall_at_{k}"] = torch.cat(hits[k]) if hits[k] else torch.empty(0, dtype=torch.float64)
    metrics = {name: float(v.mean()) if v.numel() else math.nan for name, v in cat.items()}
    if clustering:
        metrics |= cluster_scores(q, query_labels, seed)
    protocol = {
        "protocol": "leave-one-out" if loo else "query-gallery",
        "self_exclusion": "by index" if loo else "none",
        "distance": distance,
        "recall_k": ks,
        "queries": int(len(query_labels)),
        "gallery": int(n_g),
        "lone_queries_excluded": int((~kept).sum()),
        "ranking_depth": "full" if whole else f"top {need}",
        "chunk_queries": chunk,
        "chunk_bytes": chunk * n_g * per_entry,
        "kmeans": {"library": "scikit-learn", "n_init": 1, "seed": seed} if clustering else None,
        "ties": "broken by gallery index",
    }
    kept_n = max(1, int(kept.sum()))
    return RetrievalResult(metrics, {k: v / kept_n for k, v in curve.items()}, cat, kept, protocol)


def _top(s: torch.Tensor, k: int, bufs: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Indices of the k largest per row, ties by index: topk for the candidates, then a stable sort of
    them by value after sorting them by index (so equal values keep index order). ``bufs``: reused arrays
    (top values [chunk, k + 1], top indices [chunk, k + 1])."""
    c = s.shape[0]
    top_v, top_i = bufs
    v, i = torch.topk(s, k + 1, dim=1, out=(top_v[:c], top_i[:c]))
    if bool((v[:, k - 1] > v[:, k]).all()):  # the k-th value beats the next: no tie crosses the cut
        by_index = torch.sort(i[:, :k], dim=1).values
        order = torch.sort(s.gather(1, by_index), dim=1, descending=True, stable=True).indices
        return by_index.gather(1, order)
    return torch.sort(s, dim=1, descending=True, stable=True).indices[:, :k].contiguous()  # ties: rare


def cluster_scores(embeddings: torch.Tensor, labels: torch.Tensor, seed: int) -> dict[str, float]:
    """NMI and AMI of k-means clusters (as many as labels) of ``embeddings`` against ``labels``."""
    from sklearn.metrics import adjusted_mutual_info_score, normalized_mutual_info_score

    y = labels.cpu().numpy()
    n_clusters = len(set(y.tolist()))
    if n_clusters < 2 or len(y) <= n_clusters:
        return {"nmi": math.nan, "ami": math.nan}
    pred = kmeans_labels(embeddings, n_clusters, seed)
    return {"nmi": float(normalized_mutual_info_score(y, pred)), "ami": float(adjusted_mutual_info_score(y, pred))}


def kmeans_labels(embeddings: torch.Tensor, n_clusters: int, seed: int):
    """Cluster assignments from scikit-learn's k-means (Lloyd, k-means++ start, one init, ``seed``)."""
    from sklearn.cluster import KMeans

    x = embeddings.detach().float().cpu().numpy()
    return KMeans(n_clusters=n_clusters, n_init=1, random_state=seed).fit_predict(x)
