#!/usr/bin/env python
"""fit-pooling end to end from a real statistics file: time and peak memory against the plan, one run.

Each α is fitted in a fresh process (`poolcli.api.fit`, the CLI's path: load, scatter, ridge decision,
chunked LOBPCG, separability); the process's peak RSS (`ru_maxrss`) is reported beside the memory plan
printed before the solve; the baseline is a process that only loads the statistics (torch, the library and
the file): its peak is subtracted to give what the fit itself added, compared with the plan.

    python benchmarks/fit_e2e_bench.py STATS.safetensors [--alpha 1,25] [--max-memory 8G] [--threads 2]

Statistics used in docs/BENCHMARKS.md (the fixture CNN at 224 px, 200 digits, `poolcli collect`):
    --site @down3 --input-size 1x224x224   → 256×56×56  (N = 3136, M = 784)
    --site @down2 --input-size 1x224x224   → 128×112×112 (N = 12544, M = 3136)
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import machine  # noqa: E402


def child(path: str, alpha: float, max_memory: str | None, threads: int, load_only: bool) -> None:
    import torch

    torch.set_num_threads(threads)
    from poolcli import api
    from poolcli.pipeline.collect import load_stats

    t0 = time.perf_counter()
    stats, meta = load_stats(path)
    loaded = time.perf_counter() - t0
    plan = {}
    if not load_only:
        doc = api.fit(stats, meta, alphas=[alpha], max_memory=max_memory, on_plan=lambda p: plan.update(p.__dict__))
        fit = doc["fits"][0]
    total = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    out = {"loaded": loaded, "total": total, "peak": peak, "plan": plan}
    if not load_only:
        out |= {k: fit[k] for k in ("iterations", "residual", "ridge", "separability_gain", "solver")}
    print(json.dumps(out))


def run(path: str, alpha: float, max_memory: str | None, threads: int, load_only: bool = False) -> dict:
    cmd = [sys.executable, __file__, path, "--child", str(alpha), "--threads", str(threads)]
    cmd += ["--max-memory", max_memory] if max_memory else []
    cmd += ["--load-only"] if load_only else []
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(proc.stderr[-2000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("stats")
    ap.add_argument("--alpha", default="1,25")
    ap.add_argument("--max-memory", default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--child", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--load-only", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child is not None:
        child(a.stats, a.child, a.max_memory, a.threads, a.load_only)
        return
    gib = 2**30
    base = run(a.stats, 0.0, a.max_memory, a.threads, load_only=True)
    print(f"# fit-pooling end to end, {Path(a.stats).name}, {machine()}, torch threads {a.threads}")
    print(f"# loading the statistics alone: {base['loaded']:.1f} s, peak {base['peak'] / gib:.2f} GiB")
    print(
        "| α | plan | planned peak | process peak | rise over loading | rise / planned | time | iterations | residual |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for alpha in (float(x) for x in a.alpha.split(",")):
        r = run(a.stats, alpha, a.max_memory, a.threads)
        p = r["plan"]
        print(
            f"| {alpha:g} | N={p['n']} M={p['m']}, chunk {p['chunk']} | {p['peak_bytes'] / gib:.2f} GiB | "
            f"{r['peak'] / gib:.2f} GiB | {(r['peak'] - base['peak']) / gib:.2f} GiB | "
            f"{(r['peak'] - base['peak']) / p['peak_bytes']:.2f} | {r['total']:.0f} s | {r['iterations']} | "
            f"{r['residual']:.1e} |"
        )


if __name__ == "__main__":
    main()
