#!/usr/bin/env python
"""One epoch of the fixture's fine-tune: poolcli's training loop (api.finetune: per-step seeding, the schedule,
progress, the state file after the epoch) against a bare hand-written PyTorch loop with the same model, data,
batches and optimizer, in the same run; the ratio is poolcli's time over the bare loop's (AMP and EMA off).

python benchmarks/finetune_bench.py [--model fixtures/digits-cnn.safetensors] [--batch 64] [--repeat 3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from common import machine  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from poolcli import api  # noqa: E402
from poolcli.progress import set_reporter  # noqa: E402


def bare_epoch(model_path: str, batch: int, seed: int) -> float:
    """The loop a user would write: shuffled DataLoader, Adam, cross-entropy."""
    bundle = api.load_model(model_path)
    ds = api.open_data("digits:train", bundle, split="train")
    module = bundle.module.train()
    opt = torch.optim.Adam(module.parameters(), lr=1e-3)
    loader = torch.utils.data.DataLoader(
        ds, batch_size=batch, shuffle=True, drop_last=True, generator=torch.Generator().manual_seed(seed)
    )
    t0 = time.perf_counter()
    for x, y in loader:
        loss = F.cross_entropy(module(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return time.perf_counter() - t0


def poolcli_epoch(model_path: str, batch: int, seed: int, out: Path | None) -> float:
    t0 = time.perf_counter()
    api.finetune(model_path, data="digits:train", epochs=1, batch_size=batch, seed=seed, device="cpu", output=out)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(ROOT / "fixtures" / "digits-cnn.safetensors"))
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    set_reporter(None)  # no progress bar in either loop
    api.load_model(args.model)  # warm caches (imports, first model load)
    bare, ours, ours_files = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeat):  # interleaved, best of each: the machine's load drifts
            bare.append(bare_epoch(args.model, args.batch, i))
            ours.append(poolcli_epoch(args.model, args.batch, i, None))
            ours_files.append(poolcli_epoch(args.model, args.batch, i, Path(tmp) / f"ft{i}.safetensors"))
    # poolcli's times include loading the model and data (≈ what the bare loop's setup costs outside its timer)
    setup = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        b = api.load_model(args.model)
        api.open_data("digits:train", b, split="train")
        setup.append(time.perf_counter() - t0)
    s = min(setup)
    n = len(api.open_data("digits:train", api.load_model(args.model), split="train"))
    print(f"# {machine()}; one epoch of digits:train ({n} images), batch {args.batch}, Adam, CE")
    print(f"bare loop:                      {min(bare):.3f} s")
    print(f"poolcli (no files):             {min(ours) - s:.3f} s   ({(min(ours) - s) / min(bare):.3f}×)")
    print(f"poolcli (state, log, final -o): {min(ours_files) - s:.3f} s   ({(min(ours_files) - s) / min(bare):.3f}×)")
    print(f"(model + data setup subtracted from poolcli's times: {s:.3f} s)")


if __name__ == "__main__":
    main()
