"""Stream a site's feature maps through a dataset into :class:`ScatterStats`.

The forward pass stops right after the site (the rest of the network never runs), so collecting costs
at most a forward pass. Data can be split into shards (``shard=(i, n)``) or across ``torchrun`` ranks
(gloo/nccl all-reduce of the sums); partial sums are checkpointed atomically and a rerun resumes.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Subset

from ..data.specs import ImageDataset, make_loader
from ..errors import BadInputError
from ..fit.stats import ScatterStats
from ..io.tensorfile import read_tensors, write_tensors
from ..models.bundle import ModelBundle
from ..models.sites import Site, discover_sites, is_strided_conv

STATS_FORMAT = "poolcli.stats"
AT_CHOICES = ("input", "output", "destrided")


class _Stop(Exception):
    pass


@contextlib.contextmanager
def capture(module: nn.Module, path: str, at: str = "input") -> Iterator[dict[str, torch.Tensor]]:
    """Hook the module at ``path``; each forward stores its map in the yielded dict and stops the pass."""
    if "::" in path:
        raise BadInputError(f"site {path} is a functional call; collect needs a module site (see 'poolcli inspect')")
    target = module.get_submodule(path)
    if at == "destrided" and not is_strided_conv(target):
        raise BadInputError(f"--at destrided needs a strided conv site; {path} is a {type(target).__name__}")
    box: dict[str, torch.Tensor] = {}

    def hook(mod: nn.Module, args: tuple, out: Any) -> None:
        x = args[0]
        if at == "input":
            box["maps"] = x
        elif at == "output":
            box["maps"] = out
        else:  # the same conv at stride 1: what a pooling layer after a stride-1 conv would see
            box["maps"] = F.conv2d(x, mod.weight, mod.bias, 1, mod.padding, mod.dilation, mod.groups)
        raise _Stop

    handle = target.register_forward_hook(hook)
    try:
        yield box
    finally:
        handle.remove()


def _maps(module: nn.Module, x: torch.Tensor, box: dict) -> torch.Tensor:
    box.clear()
    try:
        module(x)
    except _Stop:
        pass
    if "maps" not in box:
        raise BadInputError("the site did not run during the forward pass; pick a site listed by 'poolcli inspect'")
    m = box["maps"]
    if m.dim() != 4:
        raise BadInputError(f"the site's map has shape {list(m.shape)}; collect needs [B, C, H, W] maps")
    return m


def resolve_site(bundle: ModelBundle, site: str) -> Site:
    return discover_sites(bundle.module, bundle.input_size).resolve(site, bundle.module)


CACHE_BYTES = 512 * 2**20  # keep the first pass's maps for the main pass when they fit in this budget


@torch.no_grad()
def channel_moments(module: nn.Module, ds: ImageDataset, box: dict, device: torch.device, batch_size: int,
                    images: int) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor] | None]:
    """Per-channel mean and std of the site's maps over the first ``images`` images (same on every shard).

    Also returns those maps (in dataset order) when they fit in ``CACHE_BYTES``, so the main pass does
    not run the network on them twice."""
    sub = Subset(ds, range(min(images, len(ds))))
    s1 = s2 = None
    count = 0
    cache: list[torch.Tensor] | None = []
    used = 0
    for x, _ in make_loader(sub, batch_size):
        m = _maps(module, x.to(device), box)
        if cache is not None:
            used += m.numel() * m.element_size()
            cache = cache + [m.detach().clone()] if used <= CACHE_BYTES else None
        m = m.double()
        s1 = m.sum((0, 2, 3)) if s1 is None else s1 + m.sum((0, 2, 3))
        s2 = (m * m).sum((0, 2, 3)) if s2 is None else s2 + (m * m).sum((0, 2, 3))
        count += m.shape[0] * m.shape[2] * m.shape[3]
    mean = s1 / count
    std = (s2 / count - mean * mean).clamp(min=0).sqrt()
    return mean.cpu(), torch.where(std > 1e-12, std, torch.ones_like(std)).cpu(), (torch.cat(cache) if cache else None)


def _batches(module: nn.Module, ds: ImageDataset, todo: torch.Tensor, cached: torch.Tensor | None, box: dict,
             device: torch.device, batch_size: int, workers: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(maps, labels) for the images ``todo`` (ascending): from the cache where the first pass kept them,
    else by running the network."""
    if cached is not None:
        hit = todo < cached.shape[0]
        for chunk in todo[hit].split(batch_size):
            yield cached[chunk], ds.labels[chunk]
        todo = todo[~hit]
    for x, y in make_loader(Subset(ds, todo.tolist()), batch_size, workers):
        yield _maps(module, x.to(device), box), y


def _dist() -> tuple[int, int]:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@torch.no_grad()
def collect_stats(bundle: ModelBundle, site: str, ds: ImageDataset, *, at: str = "input", device: torch.device,
                  batch_size: int = 64, workers: int = 0, shard: tuple[int, int] = (0, 1), scale_images: int = 1024,
                  checkpoint: Path | None = None, checkpoint_every: int = 0, description: dict | None = None,
                  progress: Callable[[int], None] | None = None) -> tuple[ScatterStats, dict[str, Any]]:
    if at not in AT_CHOICES:
        raise BadInputError(f"--at must be one of {', '.join(AT_CHOICES)}")
    module = bundle.module.eval().to(device)
    chosen = resolve_site(bundle, site)
    rank, world = _dist()
    index, count = shard
    if not 0 <= index < count:
        raise BadInputError(f"bad shard {index}/{count}: use i/n with 0 ≤ i < n")
    planned = torch.bincount(ds.labels, minlength=len(ds.classes))
    with capture(module, chosen.path, at) as box:
        mean, scale, cached = channel_moments(module, ds, box, device, batch_size, scale_images)
        probe = cached[:1] if cached is not None else _maps(module, ds[0][0][None].to(device), box)
        grid = tuple(probe.shape[-2:])
        if torch.any((planned > 0) & (planned < 2)):
            bad = int(((planned > 0) & (planned < 2)).nonzero()[0])
            raise BadInputError(f"class {ds.classes[bad]} has only 1 image; the within-class scatter needs ≥ 2 per class (drop it with --classes)")
        stats = ScatterStats.empty(planned, grid, mean, scale)
        mine = torch.arange(len(ds))[index::count][rank::world]
        meta = {"format": STATS_FORMAT, "version": 1, "site": chosen.path, "at": at, "grid": list(grid),
                "channels": int(probe.shape[1]), "classes": ds.classes, "shard": f"{index}/{count}", "world_size": world,
                "scale_images": scale_images, **(description or {})}
        key = hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:16]
        start = 0
        if checkpoint is not None and checkpoint.exists():
            saved, smeta = read_tensors(checkpoint)
            if smeta and smeta.get("key") == key:
                stats = ScatterStats.from_tensors(saved, grid)
                start = int(smeta["position"])
        todo = mine[start:]
        done = start
        if progress and start:
            progress(start)
        for i, (maps, y) in enumerate(_batches(module, ds, todo, cached, box, device, batch_size, workers), 1):
            stats.update(maps, y)
            done += int(y.numel())
            if progress:
                progress(int(y.numel()))
            if checkpoint is not None and checkpoint_every and i % checkpoint_every == 0:
                write_tensors(checkpoint, stats.tensors(), {"key": key, "position": done})
    if world > 1:
        import torch.distributed as dist

        for t in (stats.counts, stats.class_sums, stats.gram):
            dist.all_reduce(t)
        dist.barrier()
        dist.destroy_process_group()  # a live group at interpreter exit can abort the process
    meta["images"] = int(stats.counts.sum())
    return stats, meta


def save_stats(path: Path | str, stats: ScatterStats, meta: dict[str, Any]) -> None:
    write_tensors(path, stats.tensors(), meta)


def load_stats(path: Path | str) -> tuple[ScatterStats, dict[str, Any]]:
    tensors, meta = read_tensors(path)
    if not meta or meta.get("format") != STATS_FORMAT:
        raise BadInputError(f"{path} is not a poolcli statistics file; make one with 'poolcli collect'")
    return ScatterStats.from_tensors(tensors, tuple(meta["grid"])), meta


def merge_stats(paths: list[Path]) -> tuple[ScatterStats, dict[str, Any]]:
    if not paths:
        raise BadInputError("nothing to merge: give two or more statistics files")
    total, meta = load_stats(paths[0])
    for p in paths[1:]:
        other, m2 = load_stats(p)
        if (m2["site"], m2["grid"], m2.get("model")) != (meta["site"], meta["grid"], meta.get("model")):
            raise BadInputError(f"{p} holds statistics of another model/site than {paths[0]}; merge shards of one run only")
        try:
            total = total.merge(other)
        except ValueError as e:
            raise BadInputError(f"cannot merge {p}: {e}") from None
    meta = {**meta, "shard": "merged", "merged_from": [str(p) for p in paths], "images": int(total.counts.sum())}
    return total, meta
