#!/usr/bin/env python
"""Retrieval metrics at scale: poolcli's chunked exact k-NN metrics vs pytorch-metric-learning's
AccuracyCalculator on the same embeddings, same run. Each side runs in a fresh process for its peak RSS.

Synthetic clustered embeddings (d = 512, 100 classes, Gaussian clusters), leave-one-out, cosine. Metrics
compared: P@1, R-precision, MAP@R. AccuracyCalculator is given k = "max_bin_count" (its default k = all
references would hold an N×N index matrix: 29 GB at N = 60k) and CustomKNN(CosineSimilarity(), batch_size)
(without a batch size it forms the N×N similarity matrix); poolcli runs with ``full_map=False`` for the same
metrics, and once more with the full ranking (MAP over all references and MRR as well).

    python benchmarks/retrieval_bench.py [--sizes 10000,60000] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import machine  # noqa: E402

CHUNK_BYTES = 256 << 20


def data(n: int, d: int = 512, classes: int = 100, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=g)
    centres = torch.randn(classes, d, generator=g)
    return centres[labels] + 2.0 * torch.randn(n, d, generator=g), labels


def child(kind: str, n: int, threads: int) -> None:
    torch.set_num_threads(threads)
    x, y = data(n)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t0 = time.perf_counter()
    if kind == "pml":
        from pytorch_metric_learning.distances import CosineSimilarity
        from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
        from pytorch_metric_learning.utils.inference import CustomKNN

        calc = AccuracyCalculator(
            include=("precision_at_1", "r_precision", "mean_average_precision_at_r"),
            k="max_bin_count",
            knn_func=CustomKNN(CosineSimilarity(), batch_size=1024),
            device=torch.device("cpu"),
        )
        r = calc.get_accuracy(x, y)
        out = {"p1": r["precision_at_1"], "rp": r["r_precision"], "mapr": r["mean_average_precision_at_r"]}
    else:
        from poolcli.metrics.retrieval import retrieval_metrics

        res = retrieval_metrics(x, y, full_map=kind == "full", clustering=False, max_bytes=CHUNK_BYTES)
        m = res.metrics
        out = {"p1": m["precision_at_1"], "rp": m["r_precision"], "mapr": m["map_at_r"], "map": m.get("map")}
    out["seconds"] = time.perf_counter() - t0
    out["peak_rise"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    print(json.dumps(out))


def run(kind: str, n: int, threads: int) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", kind, str(n), "--threads", str(threads)], capture_output=True, text=True
    )
    if proc.returncode:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="10000,60000")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(a.child[0], int(a.child[1]), a.threads)
        return
    mib = 2**20
    print(f"# retrieval metrics, d=512, 100 classes, leave-one-out, cosine; {machine()}, {a.threads} threads")
    print(f"# poolcli chunk budget {CHUNK_BYTES // mib} MiB of similarity rows")
    print(
        "| N | AccuracyCalculator | peak rise | poolcli (same metrics) | peak rise | time ratio | "
        "max |Δ| P@1/RP/MAP@R | poolcli full ranking (+MAP, MRR) | peak rise |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for n in (int(s) for s in a.sizes.split(",")):
        pml, ours, full = run("pml", n, a.threads), run("ours", n, a.threads), run("full", n, a.threads)
        if "error" in pml:
            ref, ratio, delta = f"failed: {pml['error'][:60]}", "–", "–"
            pml_mem = "–"
        else:
            ref, pml_mem = f"{pml['seconds']:.1f} s", f"{pml['peak_rise'] / mib:.0f} MiB"
            ratio = f"{ours['seconds'] / pml['seconds']:.2f}×"
            delta = f"{max(abs(ours[k] - pml[k]) for k in ('p1', 'rp', 'mapr')):.1e}"
        print(
            f"| {n} | {ref} | {pml_mem} | {ours['seconds']:.1f} s | {ours['peak_rise'] / mib:.0f} MiB | {ratio} | "
            f"{delta} | {full['seconds']:.1f} s | {full['peak_rise'] / mib:.0f} MiB |"
        )


if __name__ == "__main__":
    main()
