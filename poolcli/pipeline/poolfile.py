"""The pooling file written by fit-pooling, and the picture of its maps (seed 001 Figure 1a style)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..io.atomic import atomic_path
from ..io.poolfile import read_pooling, write_pooling
from ..learn.pooling import PoolingFit
from ..ops.learned import LearnedLinearPool


def save_pooling(
    path: Path | str, fit: PoolingFit, channel_mean: torch.Tensor, channel_scale: torch.Tensor, meta: dict[str, Any]
) -> None:
    defined = torch.isfinite(fit.ratio) & torch.isfinite(fit.avg_ratio)
    tensors = {
        "P": fit.P,
        "eigenvalues": fit.eigenvalues,
        "ratio_defined": defined.to(torch.uint8),
        "ratio": torch.nan_to_num(fit.ratio, nan=0.0),
        "avg_ratio": torch.nan_to_num(fit.avg_ratio, nan=0.0),
        "channel_mean": channel_mean.float(),
        "channel_scale": channel_scale.float(),
    }
    write_pooling(path, tensors, {**fit.summary(), **meta})


def load_pooling_module(path: Path | str, trainable: bool = False) -> tuple[LearnedLinearPool, dict[str, Any]]:
    tensors, meta = read_pooling(path)
    return LearnedLinearPool.from_tensors(tensors, meta, trainable=trainable), meta


def plot_maps(path: Path | str, fit: PoolingFit, title: str = "") -> None:
    """Heat maps of the top pooling map at 9 evenly spaced output locations (red positive, blue negative)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ho, wo = fit.out_hw
    rows = [round(i * (ho - 1) / 2) for i in range(3)] if ho >= 3 else list(range(ho))
    cols = [round(j * (wo - 1) / 2) for j in range(3)] if wo >= 3 else list(range(wo))
    fig, axes = plt.subplots(len(rows), len(cols), figsize=(2.2 * len(cols), 2.2 * len(rows)), squeeze=False)
    for a, r in enumerate(rows):
        for b, c in enumerate(cols):
            img = fit.P[0, r * wo + c].view(*fit.in_hw).numpy()
            lim = float(abs(img).max()) or 1.0
            ax = axes[a][b]
            ax.imshow(img, cmap="bwr", vmin=-lim, vmax=lim)
            ax.set_title(f"m=({r},{c})", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(title or f"learned pooling, α={fit.alpha:g}, {fit.norm}", fontsize=9)
    fig.tight_layout()
    with atomic_path(path, suffix=Path(path).suffix) as tmp:
        fig.savefig(tmp, dpi=110, format=Path(path).suffix.lstrip(".") or "png")
    plt.close(fig)
