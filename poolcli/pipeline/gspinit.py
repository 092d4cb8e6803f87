"""Initialise GSP prototypes from data at convert time.

GSP starts as global average pooling: its prototypes are set by greedy k-center over the first
``memory_size`` GAP embeddings it sees in training (the reference implementation's warm-up), so a converted
model evaluated before any training is exactly GAP. This runs the converted model over images of a data
spec instead (eval mode, no gradients) and sets the prototypes from the same embeddings now.
"""

from __future__ import annotations

import torch

from ..data.specs import make_loader, open_dataset
from ..errors import BadInputError
from ..models.bundle import ModelBundle
from ..models.surgery import swapped_operators
from ..ops.gsp import GSP, unit_ball


@torch.no_grad()
def init_gsp_prototypes(bundle: ModelBundle, data: str, images: int = 1024, batch_size: int = 64, seed: int = 0) -> int:
    """Set the prototypes of every GSP that convert put into ``bundle`` from ``images`` images of ``data``;
    returns the number of images used."""
    gsps = [m for op in swapped_operators(bundle.module) for m in op.modules() if isinstance(m, GSP)]
    if not gsps:
        raise BadInputError(
            "--init-data initialises GSP prototypes, but no gsp operator was swapped in; drop --init-data"
        )
    if images < 1:
        raise BadInputError(f"--init-images must be ≥ 1, got {images}")
    ds = open_dataset(
        data,
        transform=bundle.transform,
        default_split="train",
        limit=images,
        seed=seed,
    )
    need = max(g.prototypes.shape[0] for g in gsps)
    if len(ds) < need:
        raise BadInputError(
            f"--init-data {data} gives {len(ds)} images but GSP has {need} prototypes; use more images "
            f"(--init-images) or fewer prototypes (gsp:m={len(ds)})"
        )
    feats: dict[int, list[torch.Tensor]] = {id(g): [] for g in gsps}
    hooks = [
        g.proj.register_forward_hook(lambda m, a, out, g=g: feats[id(g)].append(unit_ball(out.mean((2, 3))).cpu()))
        for g in gsps
    ]
    was = bundle.module.training
    bundle.module.eval()
    param = next(bundle.module.parameters())
    try:
        for x, _ in make_loader(ds, batch_size, seed=seed):
            bundle.module(x.to(param.device, param.dtype))
    finally:
        for h in hooks:
            h.remove()
        bundle.module.train(was)
    for g in gsps:
        emb = torch.cat(feats[id(g)])
        if not torch.isfinite(emb).all():
            raise BadInputError(f"the features at the GSP head are not finite on {data}; check the data and weights")
        g.init_prototypes(emb, seed=seed)
    return len(ds)
