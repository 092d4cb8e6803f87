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
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Subset

from ..data.specs import ImageDataset, check_workers, make_loader
from ..errors import BadInputError, RunError
from ..io.atomic import check_output
from ..io.schema import Schema
from ..io.tensorfile import check_finite, read_tensors, write_tensors
from ..learn.memory import check_collect
from ..learn.stats import PRECISIONS, ScatterStats
from ..models.bundle import ModelBundle
from ..models.sites import Site, discover_sites, is_strided_conv
from ..progress import task
from ..runtime import init_distributed
from ..text import quote
from .fingerprint import dataset_fingerprint, model_fingerprint

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


def cache_budget() -> int:
    """Bytes of first-pass maps kept for the main pass: POOLCLI_COLLECT_CACHE_MB (default 512; 0 turns it off).
    The statistics are bit-identical either way; only the time of the main pass changes."""
    try:
        return max(0, int(float(os.environ.get("POOLCLI_COLLECT_CACHE_MB", CACHE_BYTES / 2**20)) * 2**20))
    except ValueError:
        return CACHE_BYTES


PARTIAL_FORMAT = "poolcli.partial"


@torch.no_grad()
def channel_moments(
    module: nn.Module,
    ds: ImageDataset,
    box: dict,
    device: torch.device,
    batch_size: int,
    images: int,
    cache_bytes: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Per-channel mean and std of the site's maps over the first ``images`` images (same on every shard),
    and their mean map [C, H, W] (the centre the statistics are accumulated about).

    Also returns those maps (in dataset order) when they fit in ``cache_bytes``, so the main pass does
    not run the network on them twice."""
    sub = Subset(ds, range(min(images, len(ds))))
    s1 = s2 = total = None
    count = 0
    cache: list[torch.Tensor] | None = [] if cache_bytes > 0 else None
    used = 0
    with task("collect: channel scale pass", len(sub)) as advance:
        for x, _ in make_loader(sub, batch_size):
            m = _maps(module, x.to(device), box)
            first = count // max(1, m.shape[2] * m.shape[3])
            if cache is not None:
                used += m.numel() * m.element_size()
                cache = cache + [m.detach().clone()] if used <= cache_bytes else None
            m = m.double()
            part = m.sum(0)
            if not bool(torch.isfinite(part).all()):  # float64 sums of float maps overflow only if one is inf
                _check_finite_maps(m, first)
            total = part if total is None else total + part
            s1 = part.sum((1, 2)) if s1 is None else s1 + part.sum((1, 2))
            s2 = (m * m).sum((0, 2, 3)) if s2 is None else s2 + (m * m).sum((0, 2, 3))
            count += m.shape[0] * m.shape[2] * m.shape[3]
            advance(x.shape[0])
    mean = s1 / count
    std = (s2 / count - mean * mean).clamp(min=0).sqrt()
    scale = torch.where(std > 1e-12, std, torch.ones_like(std))
    centre = total / len(sub)
    return mean.cpu(), scale.cpu(), centre.cpu(), (torch.cat(cache) if cache else None)


def _check_finite_maps(maps: torch.Tensor, first: int) -> None:
    if not bool(torch.isfinite(maps).all()):
        bad = (~torch.isfinite(maps.reshape(maps.shape[0], -1))).any(1).nonzero()[0].item()
        raise RunError(
            f"the site's maps hold NaN/inf values (image {first + bad} of the selection): the input "
            "images or the model's weights are not finite or far out of range; check them (values of "
            "images must be in [0, 1] or 0-255), nothing was written"
        )


def _batches(
    module: nn.Module,
    ds: ImageDataset,
    batches: list[torch.Tensor],
    cached: torch.Tensor | None,
    box: dict,
    device: torch.device,
    batch_size: int,
    workers: int,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(maps, labels) for each batch of indices: from the first pass's cache for the leading batches that
    lie wholly inside it, then by running the network over the rest (one loader, same batch boundaries)."""
    j = 0
    while cached is not None and j < len(batches) and int(batches[j].max()) < cached.shape[0]:
        yield cached[batches[j]], ds.labels[batches[j]]
        j += 1
    rest = batches[j:]
    if not rest:
        return
    for x, y in make_loader(Subset(ds, torch.cat(rest).tolist()), batch_size, workers):
        yield _maps(module, x.to(device), box), y


def _read_partial(path: Path, job: dict[str, Any], key: str, grid: tuple[int, int], batches: int):
    """The partial sums a previous run of this exact job left, as (stats, batches done); refused when any
    part of the job differs or the file does not hold what its manifest says."""
    fix = f"delete {path} and rerun (collecting starts over)"
    try:
        saved, smeta = read_tensors(path)
    except BadInputError:
        raise BadInputError(f"the partial file {path} is unreadable (a crash or a full disk); {fix}") from None
    if not isinstance(smeta, dict) or smeta.get("format") != PARTIAL_FORMAT:
        raise BadInputError(f"{path} is not a poolcli partial file; {fix}")
    if smeta.get("key") != key:
        theirs = smeta.get("job") if isinstance(smeta.get("job"), dict) else {}
        differ = sorted(k for k in set(job) | set(theirs) if job.get(k) != theirs.get(k)) or ["(unknown)"]
        raise BadInputError(
            f"{path} holds partial sums of a different job ({', '.join(differ[:6])} differ); "
            f"rerun the exact same command to resume it, or {fix}"
        )
    try:
        stats = ScatterStats.from_tensors(saved, grid, job["precision"])
        done = smeta.get("batches")
        images = smeta.get("images")
        ok = (
            isinstance(done, int)
            and 0 <= done <= batches
            and isinstance(images, int)
            and int(stats.counts.sum()) == images
            and stats.gram.shape == (grid[0] * grid[1],) * 2
        )
    except (KeyError, TypeError, ValueError, RuntimeError):
        ok = False
    if not ok:
        raise BadInputError(f"the partial file {path} is inconsistent; {fix}")
    return stats, done


def job_description(
    bundle: ModelBundle,
    ds: ImageDataset,
    site: str,
    at: str,
    shard: tuple[int, int],
    world: int,
    batch_size: int,
    scale_images: int,
    device: torch.device,
    description: dict | None,
    precision: str = "mixed",
) -> dict:
    """Everything that decides the bits of the statistics: model weights and architecture, the images and
    their order, site, batching, the moments pass, device and library versions. A partial is adopted only
    by a run whose description is equal; shards merge only when equal but for ``shard``."""
    from .. import __version__

    return {
        "model": model_fingerprint(bundle),
        "data": dataset_fingerprint(ds),
        "site": site,
        "at": at,
        "shard": f"{shard[0]}/{shard[1]}",
        "world_size": world,
        "batch_size": batch_size,
        "scale_images": scale_images,
        "precision": precision,
        "device": device.type,
        "torch": torch.__version__,
        "poolcli": __version__,
        **{k: v for k, v in (description or {}).items() if k in ("seed", "max_per_class", "selection")},
    }


def _key(job: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(job, sort_keys=True).encode()).hexdigest()


@torch.no_grad()
def collect_stats(
    bundle: ModelBundle,
    site: str,
    ds: ImageDataset,
    *,
    at: str = "input",
    device: torch.device,
    batch_size: int = 64,
    workers: int = 0,
    shard: tuple[int, int] = (0, 1),
    scale_images: int = 1024,
    checkpoint: Path | None = None,
    checkpoint_every: int = 0,
    description: dict | None = None,
    cache_bytes: int | None = None,
    output: Path | None = None,
    precision: str = "mixed",
    max_memory: int | None = None,
) -> tuple[ScatterStats, dict[str, Any]]:
    """Stream the site's maps of ``ds`` (this shard's images) into :class:`ScatterStats`.

    ``checkpoint``: a partial file written every ``checkpoint_every`` batches (atomically; also on Ctrl-C);
    a rerun of the same job continues after the last batch it holds and gives bit-identical statistics.
    ``output``: checked for space before the pass starts. ``precision``: ``mixed`` (each batch's Gram in
    float32, summed in float64) or ``float64`` (see :mod:`poolcli.learn.stats`). ``max_memory``: the byte
    budget the statistics must fit (default 3/4 of the available memory), checked before the pass."""
    cache_bytes = cache_budget() if cache_bytes is None else cache_bytes
    if at not in AT_CHOICES:
        raise BadInputError(f"--at must be one of {', '.join(AT_CHOICES)}")
    for option, value, low in (("--batch-size", batch_size, 1), ("--checkpoint-every", checkpoint_every, 0)):
        if value < low:
            raise BadInputError(f"{option} must be ≥ {low}, got {value}")
    if precision not in PRECISIONS:
        raise BadInputError(f"--precision must be one of {', '.join(PRECISIONS)}, not {quote(precision)}")
    if scale_images < 1:
        raise BadInputError(f"the moments' image count must be ≥ 1, got {scale_images}")
    check_workers(workers)
    module = bundle.module.eval().to(device)
    chosen = resolve_site(bundle, site)
    rank, world = init_distributed()
    index, count = shard
    if not 0 <= index < count:
        raise BadInputError(f"bad shard {index}/{count}: use i/n with 0 ≤ i < n")
    if checkpoint is not None and world > 1:
        checkpoint = checkpoint.with_name(f"{checkpoint.name}.rank{rank}")
    planned = torch.bincount(ds.labels, minlength=len(ds.classes))
    job = job_description(
        bundle, ds, chosen.path, at, shard, world, batch_size, scale_images, device, description, precision
    )
    key = _key(job)
    mine = torch.arange(len(ds))[index::count][rank::world]
    batches = list(mine.split(batch_size))
    with capture(module, chosen.path, at) as box:
        probe = _maps(module, ds[0][0][None].to(device), box)
        grid, channels = tuple(probe.shape[-2:]), int(probe.shape[1])
        n = grid[0] * grid[1]
        check_collect(n, channels, len(ds.classes), batch_size, cache_bytes, max_memory)
        nbytes = 8 * (n * n + (len(ds.classes) + 1) * n * channels + 2 * len(ds.classes) + 2 * channels) + 65536
        if output is not None:
            check_output(output, nbytes=nbytes)
        if checkpoint is not None:
            if checkpoint.exists() and not checkpoint.is_file():
                raise BadInputError(
                    f"the --checkpoint-every partial {quote(checkpoint)} exists and is not a regular file; move it "
                    "away or choose another -o (the partial sits beside -o)"
                )
            check_output(checkpoint, option="the --checkpoint-every partial", nbytes=2 * nbytes)
        single = (planned > 0) & (planned < 2)
        if bool(single.any()):
            bad = ds.classes[int(single.nonzero()[0])]
            fix = (
                "raise --max-per-class to 2 or more"
                if bool((planned[planned > 0] == 1).all())
                else f"drop it with --classes or add images of class {bad}"
            )
            raise BadInputError(
                f"class {quote(bad)} has only 1 image; the within-class scatter needs ≥ 2 per class: {fix}"
            )
        if int((planned > 0).sum()) < 2:
            raise BadInputError(
                "the selection holds only one class; the between-class scatter needs ≥ 2 classes: widen --classes"
            )
        start = 0
        if checkpoint is not None and checkpoint.exists():
            stats, start = _read_partial(checkpoint, job, key, grid, len(batches))
            cached = None  # the moments come from the partial; no first pass
        else:
            # the first pass's maps stand in for the main pass only where both split the images alike
            whole = count == 1 and world == 1
            mean, scale, centre, cached = channel_moments(
                module, ds, box, device, batch_size, scale_images, cache_bytes if whole else 0
            )
            stats = ScatterStats.empty(planned, grid, mean, scale, precision, centre)
        meta = {
            "format": STATS_FORMAT,
            "version": 2,
            "site": chosen.path,
            "at": at,
            "grid": list(grid),
            "channels": channels,
            "classes": ds.classes,
            "shard": f"{index}/{count}",
            "shards": [index],
            "shard_count": count,
            "world_size": world,
            "scale_images": scale_images,
            "precision": precision,
            "job_key": _key({k: v for k, v in job.items() if k != "shard"}),
            **(description or {}),
        }
        done = start

        def save_partial() -> None:
            images = int(stats.counts.sum())
            write_tensors(
                checkpoint,
                stats.tensors(),
                {"format": PARTIAL_FORMAT, "key": key, "job": job, "batches": done, "images": images},
                what="the partial file",
            )

        try:
            shard_images = len(range(index, len(ds), count))  # all ranks together: rank 0 reports for them
            with task(f"collect {chosen.path}", shard_images, scale=world) as advance:
                advance(sum(int(b.numel()) for b in batches[:start]))  # resumed: what the partial holds
                for maps, y in _batches(module, ds, batches[start:], cached, box, device, batch_size, workers):
                    if not stats.update(maps, y):  # the batch's sums are not finite: name the image
                        _check_finite_maps(maps, int(batches[done][0]))
                    done += 1
                    advance(int(y.numel()))
                    if checkpoint is not None and checkpoint_every and done % checkpoint_every == 0:
                        save_partial()
        except KeyboardInterrupt:
            if checkpoint is not None and checkpoint_every and done > start:
                save_partial()
            raise
    if world > 1:
        import torch.distributed as dist

        stats.complete()
        for t in (stats.counts, stats.class_sums, stats.gram):
            dist.all_reduce(t)
        dist.barrier()
        dist.destroy_process_group()  # a live group at interpreter exit can abort the process
    meta["images"] = int(stats.counts.sum())
    check_finite(stats.tensors(), "the statistics", "check the images and the model's weights")
    return stats, meta


def save_stats(path: Path | str, stats: ScatterStats, meta: dict[str, Any]) -> None:
    write_tensors(path, stats.tensors(), meta, what="the statistics", hint="check the images and the model's weights")


def load_stats(path: Path | str) -> tuple[ScatterStats, dict[str, Any]]:
    """Read and check a statistics file: manifest fields typed, tensors of the shapes the manifest implies,
    counts within the planned ones, every number finite."""
    tensors, meta = read_tensors(path)
    if not isinstance(meta, dict) or meta.get("format") != STATS_FORMAT:
        raise BadInputError(f"{path} is not a poolcli statistics file; make one with 'poolcli collect'")
    s = Schema(str(path), "the file is corrupt: re-create it with 'poolcli collect'")
    _check_stats_meta(s, meta)
    grid = s.ints(meta.get("grid"), "grid", 2, 1, 4096)
    channels = s.integer(meta.get("channels"), "channels", 1, 1 << 20)
    classes = s.texts(meta.get("classes"), "classes")
    n, q = grid[0] * grid[1], len(classes)
    shapes = {
        "weights": (q,),
        "counts": (q,),
        "class_sums": (q, n, channels),
        "gram": (n, n),
        "channel_mean": (channels,),
        "channel_scale": (channels,),
    }
    extra = set(tensors) - set(shapes) - {"centre"}
    if extra:
        raise BadInputError(f"{path}: unexpected tensor {sorted(extra)[0]!r}; {s.fix}")
    if "centre" in tensors:  # files of poolcli ≤ 0.x have none (maps centred by nothing: same A and B)
        shapes["centre"] = (channels, n)
    for name, shape in shapes.items():
        t = tensors.get(name)
        if t is None or tuple(t.shape) != shape:
            got = "missing" if t is None else f"shape {list(t.shape)}"
            raise BadInputError(f"{path}: tensor {name} is {got}, expected {list(shape)}; {s.fix}")
    stats = ScatterStats.from_tensors(tensors, tuple(grid), meta.get("precision", "float64"))
    planned = torch.where(
        stats.weights > 0, (1.0 / stats.weights.clamp(min=1e-300)).round(), torch.zeros_like(stats.weights)
    )
    if bool((stats.counts < 0).any()) or bool((stats.counts.double() > planned).any()):
        raise BadInputError(f"{path}: class counts exceed the planned ones; {s.fix}")
    try:
        check_finite(stats.tensors(), f"{path}")
    except RunError:
        raise BadInputError(f"{path} holds NaN/inf statistics; {s.fix}") from None
    return stats, meta


SITE_PATH = re.compile(r"^[A-Za-z0-9_.\-<>:]{1,1000}$")  # module paths, and owner::node for functional sites
_STATS_FIELDS = {
    "format", "version", "site", "at", "grid", "channels", "classes", "shard", "shards", "shard_count",
    "world_size", "scale_images", "job_key", "images", "merged_from", "model", "data", "dataset",
    "max_per_class", "selection", "seed", "skipped_images", "weights", "preprocess", "precision",
}  # fmt: skip


def _check_stats_meta(s: Schema, meta: dict[str, Any]) -> None:
    """The manifest fields that later steps read, typed and bounded; unknown fields refused."""
    s.only(meta, "meta", _STATS_FIELDS)
    s.integer(meta.get("version"), "version", 1, 2)
    s.text(meta.get("site"), "site", most=1000, pattern=SITE_PATH)
    if "at" in meta:
        s.text(meta["at"], "at", choices=AT_CHOICES)
    if "precision" in meta:
        s.text(meta["precision"], "precision", choices=PRECISIONS)
    count = s.integer(meta.get("shard_count", 1), "shard_count", 1, 1 << 20)
    for i, shard in enumerate(s.seq(meta.get("shards", [0]), "shards", most=count)):
        s.integer(shard, f"shards[{i}]", 0, count - 1)
    for field, low, high in (("world_size", 1, 1 << 20), ("scale_images", 1, 1 << 40), ("images", 0, 1 << 40)):
        if field in meta:
            s.integer(meta[field], field, low, high)
    for field in ("shard", "job_key", "model", "data", "dataset", "weights"):
        if field in meta:
            s.text(meta[field], field, most=4096)


def _shards(meta: dict[str, Any]) -> tuple[set[int], int]:
    count = meta.get("shard_count", 1)
    return set(meta.get("shards", [0])), int(count) if isinstance(count, int) else 1


def merge_stats(paths: list[Path]) -> tuple[ScatterStats, dict[str, Any]]:
    """Add up shards of one collect run. Refused: files of another run (model, data, site, batching ...
    differ), a shard given twice or shards that overlap."""
    if not paths:
        raise BadInputError("nothing to merge: give two or more statistics files")
    total, meta = load_stats(paths[0])
    covered, count = _shards(meta)
    owner = {i: paths[0] for i in covered}
    for p in paths[1:]:
        other, m2 = load_stats(p)
        if (m2.get("job_key"), m2["site"], m2["grid"]) != (meta.get("job_key"), meta["site"], meta["grid"]):
            raise BadInputError(
                f"{p} holds statistics of another run than {paths[0]} (model, data, site or settings "
                "differ); merge the shards of one run only"
            )
        theirs, n2 = _shards(m2)
        if n2 != count:
            raise BadInputError(f"{p} is a shard of {n2} but {paths[0]} one of {count}; merge shards of one run only")
        clash = sorted(covered & theirs)
        if clash:
            raise BadInputError(f"{p} and {owner[clash[0]]} both hold shard {clash[0]}/{count}; give each shard once")
        try:
            total = total.merge(other)
        except ValueError as e:
            raise BadInputError(f"cannot merge {p}: {e}") from None
        covered |= theirs
        owner.update({i: p for i in theirs})
    missing = sorted(set(range(count)) - covered)
    meta = {
        **meta,
        "shard": "merged" if not missing else "partial-merge",
        "shards": sorted(covered),
        "merged_from": [str(p) for p in paths],
        "images": int(total.counts.sum()),
    }
    return total, meta
