"""evaluate --plot DIR: Recall@K curves, confusion matrices, and what the learned operators of each model
do on a few images (P-pooling's α map, GSP's selection weights t over the feature map, the learned
pooling's top maps). PNG files written atomically; names say what they show."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from ..io.atomic import atomic_path

IMAGES = 4  # images shown per operator


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    _plt().close(fig)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(str(text)).name)[:60] or "model"


def recall_curves(folder: Path, doc: dict[str, Any]) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for r in doc["results"]:
        curve = r["retrieval"]["recall_curve"]
        ks = [int(k) for k in curve]
        ax.plot(ks, [100 * curve[str(k)] for k in ks], marker="o", label=Path(r["model"]).name)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("K")
    ax.set_ylabel("Recall@K (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(f"Recall@K on {doc['data']}", fontsize=9)
    fig.tight_layout()
    path = folder / "recall_at_k.png"
    _save(fig, path)
    return path


def confusion(folder: Path, index: int, result: dict[str, Any]) -> Path:
    plt = _plt()
    m = torch.tensor(result["confusion"], dtype=torch.float64)
    rows = m.sum(1, keepdim=True).clamp(min=1)
    fig, ax = plt.subplots(figsize=(4.2, 3.8))
    im = ax.imshow((m / rows).numpy(), cmap="Blues", vmin=0, vmax=1)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{Path(result['model']).name}: confusion (row-normalised)", fontsize=8)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    path = folder / f"confusion-{index}-{_slug(result['model'])}.png"
    _save(fig, path)
    return path


@torch.inference_mode()
def operator_maps(folder: Path, index: int, bundle, images: torch.Tensor, device: torch.device) -> list[Path]:
    """One figure per learned operator of ``bundle`` (P-pooling, GSP, learned linear pooling)."""
    from ..ops.gsp import GSP, gsp_pool
    from ..ops.learned import LearnedLinearPool
    from ..ops.ppool import PPool2d

    module = bundle.module.eval().to(device)
    found = [(n, m) for n, m in module.named_modules() if isinstance(m, (PPool2d, GSP, LearnedLinearPool))]
    maps: dict[str, torch.Tensor] = {}
    hooks = []
    for name, mod in found:
        if isinstance(mod, PPool2d):

            def grab(m, args, out, name=name):
                a = m.alpha_map(args[0])
                a = a.expand(args[0].shape[0], *a.shape[1:]) if a.dim() == 4 else a.reshape(1, 1, 1, 1)
                maps[name] = a.mean(1)

            hooks.append(mod.register_forward_hook(grab))
        elif isinstance(mod, GSP):

            def grab_t(m, args, out, name=name):
                f = m.proj(args[0])
                if bool(m.initialized):
                    t = gsp_pool(f, m.prototypes, m.mu, m.gamma, m.iters)[2]
                    maps[name] = t.view(f.shape[0], *f.shape[2:])

            hooks.append(mod.register_forward_hook(grab_t))
    try:
        module(images.to(device))
    finally:
        for h in hooks:
            h.remove()
    plt = _plt()
    paths = []
    for name, mod in found:
        if isinstance(mod, LearnedLinearPool):
            P = mod.P.detach().float().cpu()  # [k, M, N]
            fig, axes = plt.subplots(1, min(4, P.shape[1]), figsize=(8, 2.4), squeeze=False)
            for j, ax in enumerate(axes[0]):
                cell = j * (P.shape[1] - 1) // max(1, len(axes[0]) - 1)
                img = P[0, cell].view(*mod.in_hw).numpy() if hasattr(mod, "in_hw") else P[0, cell].numpy()[None]
                lim = float(abs(img).max()) or 1.0
                ax.imshow(img, cmap="bwr", vmin=-lim, vmax=lim)
                ax.set_title(f"output cell {cell}", fontsize=7)
                ax.axis("off")
            what = "learned pooling: top map at 4 output cells"
        elif name in maps:
            m = maps[name].float().cpu()
            n = min(IMAGES, images.shape[0])
            fig, axes = plt.subplots(2, n, figsize=(2.2 * n, 4.4), squeeze=False)
            for j in range(n):
                pic = images[j].float().mean(0).cpu().numpy()
                axes[0][j].imshow(pic, cmap="gray")
                axes[0][j].axis("off")
                axes[1][j].imshow(m[j if m.shape[0] > 1 else 0].numpy(), cmap="magma")
                axes[1][j].axis("off")
            what = "P-pooling α (mean over channels)" if isinstance(mod, PPool2d) else "GSP selection weights t"
        else:
            continue  # a GSP whose prototypes were never set: it is GAP, nothing to show
        fig.suptitle(f"{Path(bundle.spec).name} {name}: {what}", fontsize=8)
        fig.tight_layout()
        path = folder / f"operator-{index}-{_slug(bundle.spec)}-{_slug(name)}.png"
        _save(fig, path)
        paths.append(path)
    return paths
