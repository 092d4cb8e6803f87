"""evaluate --plot DIR: Recall@K curves, confusion matrices, robustness curves and example grids, and what the
learned operators of each model do on a few images (P-pooling's α map, GSP's selection weights t over the feature
map, the learned pooling's top maps). PNG files written atomically; names say what they show."""

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


def _picture(ax, x: torch.Tensor) -> None:
    """An image [C, H, W] in [0, 1] (grey when C = 1)."""
    img = x.detach().float().cpu().clamp(0, 1)
    if img.shape[0] == 1:
        ax.imshow(img[0].numpy(), cmap="gray", vmin=0, vmax=1)
    else:
        ax.imshow(img[:3].permute(1, 2, 0).numpy())
    ax.set_xticks([])
    ax.set_yticks([])


def robustness(folder: Path, results: list[dict[str, Any]], plan, examples: dict[str, Any]) -> list[Path]:
    """Error vs severity per corruption for each model, flip probability per perturbation, accuracy vs diagonal
    shift, and example grids of what was done (the first image of the pass at every corruption and severity, the
    frames of every perturbation sequence)."""
    plt = _plt()
    paths: list[Path] = []
    names = [Path(r["model"]).name + (" (baseline)" if r.get("role") == "baseline" else "") for r in results]
    blocks = [r["robustness"] for r in results]
    if plan.corruptions:
        cols = min(5, len(plan.corruptions))
        rows = -(-len(plan.corruptions) // cols)
        fig, axes = plt.subplots(rows, cols, figsize=(2.4 * cols, 2.0 * rows), squeeze=False, sharey=True)
        for k, c in enumerate(plan.corruptions):
            ax = axes[k // cols][k % cols]
            for name, b in zip(names, blocks):
                sev = [0, *plan.severities] if b["clean_error"] is not None else list(plan.severities)
                err = [b["clean_error"]] if b["clean_error"] is not None else []
                err += [b["corruptions"]["errors"][c][str(s)] for s in plan.severities]
                ax.plot(sev, [100 * e for e in err], marker="o", ms=3, label=name)
            ax.set_title(c, fontsize=8)
            ax.grid(alpha=0.3)
            ax.tick_params(labelsize=7)
        for k in range(len(plan.corruptions), rows * cols):
            axes[k // cols][k % cols].axis("off")
        axes[0][0].set_ylabel("top-1 error (%)", fontsize=8)
        axes[0][0].legend(fontsize=6)
        fig.suptitle("error vs severity (0 = clean)", fontsize=9)
        fig.tight_layout()
        paths.append(folder / "robustness-errors.png")
        _save(fig, paths[-1])
    if plan.perturbations:
        fig, ax = plt.subplots(figsize=(max(4.0, 0.7 * len(plan.perturbations) * len(results)), 3.4))
        width = 0.8 / len(results)
        for m, (name, b) in enumerate(zip(names, blocks)):
            fp = b["perturbations"]["flip_probability"]
            xs = [i + m * width for i in range(len(plan.perturbations))]
            ax.bar(xs, [100 * fp[p] for p in plan.perturbations], width=width, label=name)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(plan.perturbations))])
        ax.set_xticklabels(plan.perturbations, rotation=40, ha="right", fontsize=7)
        ax.set_ylabel("flip probability (%)")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3, axis="y")
        fig.tight_layout()
        paths.append(folder / "robustness-flips.png")
        _save(fig, paths[-1])
    if plan.shift is not None:
        fig, ax = plt.subplots(figsize=(5, 3.4))
        for name, b in zip(names, blocks):
            sh = b["shift"]
            ax.plot(sh["diagonal_shift"], [100 * v for v in sh["diagonal_accuracy"]], marker=".", label=name)
        ax.set_xlabel("diagonal shift (pixels)")
        ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        ax.set_title(f"accuracy vs diagonal shift ({plan.shift_protocol}-image protocol)", fontsize=9)
        fig.tight_layout()
        paths.append(folder / "robustness-shift.png")
        _save(fig, paths[-1])
    shown = examples.get("corruptions") or {}
    if shown:
        sevs = sorted({s for row in shown.values() for s in row})
        fig, axes = plt.subplots(len(shown), len(sevs), figsize=(1.2 * len(sevs), 1.2 * len(shown)), squeeze=False)
        for i, (c, row) in enumerate(shown.items()):
            for j, s in enumerate(sevs):
                ax = axes[i][j]
                if s in row:
                    _picture(ax, row[s])
                else:
                    ax.axis("off")
                if i == 0:
                    ax.set_title("clean" if s == 0 else f"severity {s}", fontsize=6)
            axes[i][0].set_ylabel(c, fontsize=6, rotation=0, ha="right", va="center")
        fig.tight_layout()
        paths.append(folder / "robustness-corruption-examples.png")
        _save(fig, paths[-1])
    seqs = examples.get("perturbations") or {}
    if seqs:
        most = max(s.shape[0] for s in seqs.values())
        cols = min(8, most)
        fig, axes = plt.subplots(len(seqs), cols, figsize=(1.2 * cols, 1.2 * len(seqs)), squeeze=False)
        for i, (p, seq) in enumerate(seqs.items()):
            picks = torch.linspace(0, seq.shape[0] - 1, cols).round().long().tolist()
            for j, t in enumerate(picks):
                _picture(axes[i][j], seq[t])
                axes[i][j].set_title(f"frame {t}", fontsize=5)
            axes[i][0].set_ylabel(p, fontsize=6, rotation=0, ha="right", va="center")
        fig.tight_layout()
        paths.append(folder / "robustness-sequence-examples.png")
        _save(fig, paths[-1])
    return paths
