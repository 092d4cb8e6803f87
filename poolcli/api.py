"""poolcli's Python API: one function per step of the job, the same functions the CLI calls.

    import poolcli
    model = poolcli.load_model("timm:resnet18", pretrained=True)      # a ModelBundle: .module, .transform
    sites = poolcli.inspect(model)                                      # SiteReport
    stats, meta = poolcli.collect(model, "@down3", "folder:photos:train")
    report = poolcli.fit(stats, meta, alphas=[25], output="pool.safetensors")
    new, info = poolcli.convert(model, ["@down3=learned:pool.safetensors"], output="learned.safetensors")
    new, info = poolcli.finetune(new, "folder:photos:train", epochs=3, output="ft.safetensors")
    scores = poolcli.evaluate([new], "folder:photos:val")

Models are spec strings (a poolcli checkpoint, ``timm:NAME``, ``tv:NAME``, ``poolcli:NAME``), a
:class:`~poolcli.models.bundle.ModelBundle` (from :func:`load_model`) or a bare ``nn.Module`` (give
``input_size``; such a model can be used but not saved as a checkpoint). Data are spec strings
(``digits:train``, ``folder:PATH[:SPLIT]``, ``cifar10:PATH``, ``tensors:FILE`` ...) preprocessed with the
model's own transform, or a ``Dataset``/``DataLoader`` of ``(input tensor, label)`` items already
preprocessed. Results are plain objects: dataclasses and JSON-ready dicts.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .errors import BadInputError
from .models.bundle import ModelBundle
from .text import quote

MODEL_OPTIONS = (
    "weights",
    "pretrained",
    "use_ema",
    "num_classes",
    "in_chans",
    "input_size",
    "crop_pct",
    "interpolation",
    "mean",
    "std",
)


class RandomWeightsWarning(UserWarning):
    """A timm/torchvision/poolcli architecture is used with random weights."""


class ClassMismatchError(BadInputError):
    """The dataset's class names are not the checkpoint's."""


# ----------------------------------------------------------------------------- models and data
def load_model(model: Any, **options: Any) -> ModelBundle:
    """A :class:`ModelBundle` (module + manifest + preprocessing: ``bundle.transform``) from a spec string,
    a bundle (returned as it is) or an ``nn.Module`` (``input_size=(C, H, W)`` required; ``mean``/``std``
    default to ImageNet's for 3 channels, 0.5 otherwise).

    Options (all commands share them): ``weights`` (a file; training checkpoints are unwrapped),
    ``pretrained`` (from the local timm/torch hub cache, never downloaded), ``use_ema``, ``num_classes`` (a
    head trained for other classes is re-initialised), ``in_chans``, ``input_size`` ("3x224x224" or a
    tuple), ``crop_pct``, ``interpolation``, ``mean``, ``std`` (override the model's preprocessing)."""
    unknown = sorted(set(options) - set(MODEL_OPTIONS))
    if unknown:
        raise TypeError(f"load_model() got unknown options {unknown}; it takes {', '.join(MODEL_OPTIONS)}")
    if isinstance(model, ModelBundle):
        return model
    if isinstance(model, nn.Module):
        return _wrap_module(model, **options)
    if not isinstance(model, (str, Path)):
        raise TypeError(f"a model is a spec string, a ModelBundle or an nn.Module, not {type(model).__name__}")
    from .models.spec import build_model

    bundle = build_model(str(model), **{k: v for k, v in options.items() if v is not None and v is not False})
    if bundle.head_reset:
        warnings.warn(
            f"{bundle.spec}: classifier {', '.join(bundle.head_reset)} re-initialised for "
            f"{bundle.num_classes} classes (the weights were trained for others); fine-tune it before evaluating",
            UserWarning,
            stacklevel=2,
        )
    return bundle


def _wrap_module(
    module: nn.Module, input_size: Any = None, mean: Any = None, std: Any = None, **rest: Any
) -> ModelBundle:
    from .models.spec import parse_input_size

    if input_size is None:
        raise BadInputError("an nn.Module needs input_size=(C, H, W) (poolcli runs it to find its sites)")
    size = parse_input_size(input_size) if isinstance(input_size, str) else tuple(int(v) for v in input_size)
    c = size[0]
    if any(v not in (None, False) for k, v in rest.items()):
        raise BadInputError(f"options {sorted(k for k, v in rest.items() if v)} apply to spec strings, not modules")
    default_mean, default_std = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)) if c == 3 else ((0.5,) * c, (0.5,) * c)
    return ModelBundle(
        module=module,
        base={"source": "module", "name": type(module).__name__, "kwargs": {}},
        input_size=size,  # type: ignore[arg-type]
        mean=tuple(mean or default_mean),
        std=tuple(std or default_std),
        spec=f"<{type(module).__name__}>",
        weights="given",
    )


def warn_if_random(bundle: ModelBundle, doing: str) -> None:
    origin = (bundle.extra.get("origin") or {}).get("weights")
    if bundle.weights == "random":
        why = "no --weights or --pretrained"
    elif origin == "random" and bundle.weights.startswith("checkpoint:"):
        why = "it was made from random weights and not fine-tuned since"
    else:
        return
    warnings.warn(
        f"{bundle.spec} has random weights ({why}): {doing} an untrained network", RandomWeightsWarning, stacklevel=3
    )


def open_data(
    data: Any,
    model: Any,
    *,
    split: str = "test",
    classes: str | list[int] | None = None,
    limit: int | None = None,
    max_per_class: int | None = None,
    seed: int = 0,
    bad_images: str = "error",
):
    """A dataset spec preprocessed with the model's own transform, or a Dataset/DataLoader passed through
    (its items are taken as model inputs already)."""
    from .data.specs import open_dataset, wrap_dataset

    model = load_model(model)
    if isinstance(data, DataLoader):
        data = data.dataset
    if isinstance(data, Dataset):
        return wrap_dataset(data, model.input_size).select(classes, limit, max_per_class, seed)
    if not isinstance(data, (str, Path)):
        raise TypeError(f"data is a spec string, a Dataset or a DataLoader, not {type(data).__name__}")
    return open_dataset(
        str(data),
        transform=model.transform,
        default_split=split,
        classes=classes,
        limit=limit,
        max_per_class=max_per_class,
        seed=seed,
        bad_images=bad_images,
    )


def environment() -> dict[str, str]:
    import platform

    import timm
    import torchvision

    from . import __version__

    return {
        "poolcli": __version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "timm": timm.__version__,
        "python": platform.python_version(),
    }


def model_record(bundle: ModelBundle) -> dict[str, Any]:
    """What a report says about a model: its spec, where its weights came from, its preprocessing."""
    return {
        "model": bundle.spec,
        "weights": bundle.weights,
        "origin": bundle.extra.get("origin"),
        "head_reset": list(bundle.head_reset),
        "preprocess": bundle.transform.describe(),
    }


# ----------------------------------------------------------------------------- the steps
def inspect(model: Any, **options: Any):
    """Every pooling/downsampling site that runs (a :class:`~poolcli.models.sites.SiteReport`)."""
    from .models.sites import discover_sites

    bundle = load_model(model, **options)
    return discover_sites(bundle.module, bundle.input_size)


def collect(
    model: Any,
    site: str,
    data: Any = "digits:train",
    *,
    at: str = "input",
    classes: str | None = None,
    limit: int | None = None,
    max_per_class: int = 10000,
    device: str = "auto",
    batch_size: int = 64,
    workers: int = 0,
    seed: int = 0,
    shard: tuple[int, int] = (0, 1),
    scale_images: int = 1024,
    checkpoint: Path | None = None,
    checkpoint_every: int = 0,
    bad_images: str = "error",
    output: Path | str | None = None,
    precision: str = "mixed",
    max_memory: int | str | None = None,
    **options: Any,
):
    """Scatter statistics of ``site``'s maps over ``data``: returns ``(ScatterStats, metadata)``; with
    ``output`` they are also written there (checked before the pass). ``precision``: ``mixed`` (each
    batch's Gram product in float32, summed in float64; relative error ~1e-7) or ``float64``.
    ``max_memory`` (bytes or ``8G``; default 3/4 of the available memory): statistics that cannot fit are
    refused before the pass."""
    from .io.atomic import check_output, output_lock
    from .pipeline.collect import collect_stats, save_stats
    from .runtime import resolve_device, seed_everything

    seed_everything(seed)
    bundle = load_model(model, **options)
    ds = open_data(
        data,
        bundle,
        split="train",
        classes=classes,
        limit=limit,
        max_per_class=max_per_class,
        seed=seed,
        bad_images=bad_images,
    )
    if getattr(ds, "skipped", None):
        warnings.warn(f"left out {len(ds.skipped)} unreadable image(s), e.g. {ds.skipped[0]}", stacklevel=2)
    warn_if_random(bundle, "collecting the statistics of")  # after the data: a bad input is the one line
    desc = {
        "model": bundle.spec,
        "data": str(data) if isinstance(data, (str, Path)) else ds.description,
        "dataset": getattr(ds, "description", str(data)),
        "max_per_class": max_per_class,
        "selection": {"classes": classes, "limit": limit},
        "seed": seed,
        "skipped_images": list(getattr(ds, "skipped", [])),
        "weights": bundle.weights,
        "preprocess": ds.preprocess.signature()[1:] if hasattr(ds.preprocess, "signature") else None,
    }
    out = Path(output) if output is not None else None
    if out is not None:
        check_output(out)
    lock = output_lock(out, "poolcli collect") if out is not None else contextlib.nullcontext()
    with lock:
        stats, meta = collect_stats(
            bundle,
            site,
            ds,
            at=at,
            device=resolve_device(device),
            batch_size=batch_size,
            workers=workers,
            shard=shard,
            scale_images=scale_images,
            checkpoint=checkpoint,
            checkpoint_every=checkpoint_every,
            description=desc,
            output=out,
            precision=precision,
            max_memory=memory_budget(max_memory),
        )
        if out is not None:
            save_stats(out, stats, meta)
    if checkpoint is not None:  # the job is done: its partial (this rank's, under torchrun) goes
        path = Path(checkpoint)
        rank = meta.get("world_size", 1) > 1 and os.environ.get("RANK")
        (path.with_name(f"{path.name}.rank{rank}") if rank else path).unlink(missing_ok=True)
    return stats, meta


def fit(
    stats: Any,
    meta: dict[str, Any] | None = None,
    *,
    alphas: Sequence[float] = (25.0,),
    k: int = 2,
    norm: str = "l2",
    stride: int = 2,
    solver: str = "auto",
    output: Path | str | None = None,
    plot: Path | str | None = None,
    max_memory: int | str | None = None,
    on_plan: Callable[[Any], None] | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """Closed-form learned pooling from statistics (``(stats, meta)`` of :func:`collect`, or a statistics
    file path): for every α the top-``k`` generalized eigenvectors per output location. Writes ``output``
    (one file per α when several) and ``plot``; returns the report (separability vs average pooling, ...).
    ``device``: where the LOBPCG solve runs (``cpu``, ``cuda``, ``auto``; its memory budget is then that
    device's)."""
    from .pipeline.collect import load_stats
    from .pipeline.fitting import check_alphas, check_fit_outputs, run_fit
    from .runtime import resolve_device

    if isinstance(stats, (str, Path)):
        stats, meta = load_stats(stats)
    if meta is None:
        raise TypeError("fit() needs the metadata that collect() returned beside the statistics")
    alphas = check_alphas([float(a) for a in alphas])
    out, png = (Path(output) if output else None), (Path(plot) if plot else None)
    check_fit_outputs(out, png, alphas)
    doc = run_fit(
        stats,
        meta,
        alphas,
        k=k,
        norm=norm,
        stride=stride,
        solver=solver,
        output=out,
        plot=png,
        max_memory=memory_budget(max_memory),
        on_plan=on_plan,
        device=resolve_device(device),
    )
    return {**doc, "environment": environment()}


def memory_budget(max_memory: int | str | None) -> int | None:
    """``--max-memory`` (``8G``, bytes) → bytes; None: 3/4 of the available memory."""
    from .learn.memory import parse_size

    return parse_size(max_memory) if isinstance(max_memory, str) else max_memory


def fit_plan(
    meta: dict[str, Any],
    *,
    k: int = 2,
    stride: int = 2,
    solver: str = "auto",
    max_memory: int | str | None = None,
    device: str = "cpu",
):
    """What a fit of the statistics described by ``meta`` (grid, channels, classes) will hold in memory and
    how it will be solved; refused (one line, with what helps) when it cannot fit the budget."""
    from .pipeline.fitting import plan_for
    from .runtime import resolve_device

    grid = tuple(meta["grid"])
    budget = memory_budget(max_memory)
    return plan_for(
        grid, int(meta["channels"]), len(meta["classes"]), k, stride, solver, budget, resolve_device(device)
    )


def convert(
    model: Any,
    swaps: Sequence[str | tuple[str, str]],
    *,
    output: Path | str | None = None,
    recipe: str = "after",
    trainable: bool = False,
    seed: int = 0,
    init_data: Any = None,
    init_images: int = 1024,
    **options: Any,
) -> tuple[ModelBundle, dict[str, Any]]:
    """Swap the pooling at sites (``"@down3=learned:pool.safetensors"`` or ``(site, op)``); returns the new
    bundle and a report (per-swap results, MACs and parameters before/after). With ``output`` the checkpoint
    is written, reloaded and checked before it replaces the file."""
    from .io.atomic import check_output, check_suffix
    from .models.checkpoint import save_checkpoint
    from .models.convert import convert as convert_model
    from .models.convert import parse_swap
    from .models.sites import discover_sites
    from .pipeline.fingerprint import descent

    out = Path(output) if output is not None else None
    if out is not None:
        check_output(out)
        check_suffix(out, "poolcli checkpoints")
    bundle = load_model(model, **options)
    if out is not None:
        check_saveable(bundle)
    warn_if_random(bundle, "converting")
    lineage = descent(bundle)
    report = discover_sites(bundle.module, bundle.input_size)
    parsed = [parse_swap(s) if isinstance(s, str) else tuple(s) for s in swaps]
    new, results = convert_model(bundle, parsed, trainable=trainable, report=report, seed=seed, recipe=recipe)
    # the parent's facts (its accuracy, its training) are not the converted model's: lineage
    new.extra = {**({"origin": bundle.extra["origin"]} if "origin" in bundle.extra else {}), "lineage": lineage}
    initialised = None
    if init_data is not None:
        from .pipeline.gspinit import init_gsp_prototypes

        initialised = init_gsp_prototypes(new, init_data, images=init_images, seed=seed)
        for r in results:
            if r.note.startswith("GSP is global average pooling"):
                r.note = f"GSP prototypes initialised from {initialised} images of {init_data}"
    after = discover_sites(new.module, new.input_size)
    if out is not None:
        save_checkpoint(new, None, out, verify=True)
    params = (sum(p.numel() for p in bundle.module.parameters()), sum(p.numel() for p in new.module.parameters()))
    doc = {
        "schema": "poolcli.convert/2",
        **model_record(bundle),
        "recipe": recipe,
        "gsp_init_images": initialised,
        "output": str(out) if out else None,
        "swaps": [r.to_dict() for r in results],
        "manifest_swaps": new.swaps,
        "params": {"before": params[0], "after": params[1]},
        "macs": {"before": report.total_macs, "after": after.total_macs},
        "macs_definition": "multiply-accumulates of one image's forward pass (conv, linear, pooling taps)",
        "environment": environment(),
    }
    return new, doc


def finetune(
    model: Any,
    data: Any = "digits:train",
    *,
    val: Any = None,
    output: Path | str | None = None,
    on_epoch: Callable[[dict], None] | None = None,
    **settings: Any,
) -> tuple[ModelBundle, dict[str, Any]]:
    """Fine-tune (cross-entropy; ``schedule`` cosine, step:E1,E2, constant or plateau, with ``warmup``) on
    ``data`` (a spec, or a Dataset/DataLoader of model inputs), with accuracy on ``val`` after each epoch.
    ``settings``: the training fields of :class:`~poolcli.pipeline.finetune.FinetuneConfig` (``epochs``, ``lr``,
    ``optimizer``, ``momentum``, ``nesterov``, ``label_smoothing``, ``clip_grad``, ``shift``, ``classes``,
    ``limit``, ``resume`` ...) and the model options of :func:`load_model` (``num_classes``, ``weights`` ...).
    Returns the trained bundle (its manifest records the run, its history, the data's class names and the
    lineage) and a report; with ``output`` the checkpoint is written, and after every epoch the training state
    (``OUT.last.safetensors``: ``resume=True`` continues from it, bit-identically on CPU), the best model by
    the validation metric — top-1, MAP@R for metric losses — (``OUT.best.safetensors``) and the log
    (``OUT.log.jsonl``)."""
    import dataclasses

    from .io.atomic import check_output, check_suffix
    from .models.checkpoint import save_checkpoint
    from .pipeline.finetune import FinetuneConfig, run_files
    from .pipeline.finetune import finetune as run_finetune

    fields = {f.name for f in dataclasses.fields(FinetuneConfig)} - {"data", "val"}
    unknown = sorted(set(settings) - fields - set(MODEL_OPTIONS))
    if unknown:
        raise TypeError(f"finetune() got unknown settings {unknown}")
    options = {k: v for k, v in settings.items() if k in MODEL_OPTIONS}
    named = lambda d: str(d) if isinstance(d, (str, Path)) or d is None else type(d).__name__  # noqa: E731
    cfg = FinetuneConfig(data=named(data), val=named(val), **{k: v for k, v in settings.items() if k in fields})
    cfg.check()
    out = Path(output) if output is not None else None
    files = run_files(out)
    if out is not None:
        check_output(out)
        check_suffix(out, "poolcli checkpoints")
        for f in files.values():
            check_output(f)
    elif cfg.resume:
        raise BadInputError("--resume continues the run that writes -o OUT: give the same -o")
    bundle = load_model(model, **options)
    if out is not None:
        check_saveable(bundle)
        check_output(out, nbytes=sum(t.numel() * t.element_size() for t in bundle.module.state_dict().values()))
    if bundle.weights == "random":
        warnings.warn(f"{bundle.spec} has random weights: training from scratch", RandomWeightsWarning, stacklevel=2)
    pick = dict(classes=cfg.classes, seed=cfg.seed, bad_images=cfg.bad_images)
    train = open_data(data, bundle, split="train", limit=cfg.limit, max_per_class=cfg.max_per_class, **pick)
    checked = open_data(val, bundle, split="test", **pick) if val is not None else None
    if cfg.holdout is not None:
        from .data.specs import stratified_folds

        if val is not None:
            raise BadInputError("--holdout validates on held-out training images: drop --val (or --holdout)")
        kept, held = stratified_folds(train.labels, cfg.holdout, cfg.fold, cfg.seed)
        train, checked = train.subset(kept), train.subset(held)
        cfg = dataclasses.replace(cfg, val=f"{cfg.data} (held-out fold {cfg.fold} of {round(1 / cfg.holdout)})")
    from .runtime import main_process

    bundle, doc = run_finetune(bundle, cfg, train, checked, on_epoch=on_epoch, files=files)
    if out is not None and main_process():  # under torchrun rank 0 writes
        save_checkpoint(bundle, None, out)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return bundle, {**doc, **model_record(bundle), "output": str(out) if out else None, "environment": environment()}


METRIC_FAMILIES = ("classification", "retrieval", "separability", "robustness")


def evaluate(
    models: Sequence[Any],
    data: Any = "digits:test",
    *,
    weights: Sequence[Path | str | None] | None = None,
    device: str = "auto",
    batch_size: int = 128,
    workers: int = 0,
    seed: int = 0,
    classes: str | None = None,
    limit: int | None = None,
    max_per_class: int | None = None,
    bad_images: str = "error",
    allow_class_mismatch: bool = False,
    metrics: Sequence[str] = ("classification",),
    embed_site: str | None = None,
    distance: str = "cosine",
    recall_k: Sequence[int] = (1, 2, 4, 8),
    gallery: Any = None,
    full_map: bool = True,
    whiten: Path | str | None = None,
    whiten_dim: int | None = None,
    save_whitening: Path | str | None = None,
    plot: Path | str | None = None,
    corruptions: str | Sequence[str] | None = None,
    severities: str | Sequence[int] | None = None,
    perturbations: str | Sequence[str] | None = None,
    shift: int | str | None = None,
    shift_passes: int = 5,
    baseline: Any = None,
    corruption_table: str | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Evaluate each model on ``data``, each fed through its own preprocessing, in one pass per model that
    feeds every requested metric family:

    * ``classification``: top-1 (top-5 above 5 classes), cross-entropy, images/s;
    * ``retrieval``: P@1, Recall@K (``recall_k``), R-precision, MAP@R, MAP, MRR, NMI/AMI of the embeddings
      (:mod:`poolcli.metrics.retrieval`): the pre-logit features, or ``embed_site``'s output; leave-one-out
      on ``data``, or ``data`` as queries against ``gallery``; ``distance`` cosine or euclidean;
    * ``separability``: seed 001's eq. 8 ratio S_b/S_w and Fisher's tr(S_w⁻¹S_b) of the same embeddings
      (:mod:`poolcli.metrics.separability`);
    * ``robustness``: one pass over ``data`` for all models together (:mod:`poolcli.pipeline.robustness`): each
      batch corrupted (``corruptions`` at ``severities``, CIFAR-10-C/ImageNet-C tables by image size or
      ``corruption_table``), turned into perturbation sequences (``perturbations``) and shifted (up to ``shift``
      pixels, ``shift_passes`` passes) once, and every model sees the same altered pixels: errors, unnormalised
      and (with ``baseline``: a model spec run in the same pass, a JSON keyed by corruption name, or
      ``alexnet-imagenet-c``) normalised CE, flip probabilities/rates, top-5 distances, shift consistency.
      ``data`` may be ``cifar10c:DIR`` / ``cifar10p:DIR`` (the published arrays).

    ``whiten``: retrieval embeddings go through L2 → PCA-whitening → L2 (``whiten_dim`` components) fitted
    on this data spec (saved to ``save_whitening``, one model only) or read from a saved ``.safetensors``.
    ``weights``: one entry per model (or None). A checkpoint whose class names differ from the dataset's is
    refused unless ``allow_class_mismatch``. ``plot``: a folder (made if missing) for Recall@K curves, confusion
    matrices and maps of the learned operators on a few images."""
    from .metrics.classification import METRIC_DEFINITIONS
    from .metrics.retrieval import DISTANCES
    from .metrics.robustness import DEFINITIONS as ROBUSTNESS_DEFINITIONS
    from .pipeline.evaluate import RETRIEVAL_DEFINITIONS, compare_models, evaluate_one
    from .runtime import resolve_device, seed_everything

    families = list(dict.fromkeys(metrics))
    bad = [f for f in families if f not in METRIC_FAMILIES]
    if bad or not families:
        raise BadInputError(f"unknown metric family {quote(bad[0] if bad else '')}: use {', '.join(METRIC_FAMILIES)}")
    if distance not in DISTANCES:
        raise BadInputError(f"--distance must be one of {', '.join(DISTANCES)}, not {quote(distance)}")
    recall_k = sorted({int(k) for k in recall_k})
    if not recall_k or recall_k[0] < 1:
        raise BadInputError("--recall-k needs positive integers, e.g. 1,2,4,8")
    if gallery is not None and "retrieval" not in families:
        raise BadInputError("--gallery is for retrieval: add --metrics retrieval")
    if (whiten is not None or save_whitening is not None) and "retrieval" not in families:
        raise BadInputError("--whiten is for retrieval: add --metrics retrieval")
    if save_whitening is not None:
        from .io.atomic import check_output, check_suffix

        if whiten is None or str(whiten).endswith(".safetensors"):
            raise BadInputError("--save-whitening needs --whiten DATA (the data the whitening is fitted on)")
        if len(list(models)) != 1:
            raise BadInputError("--save-whitening saves one model's whitening: evaluate one model with it")
        check_suffix(Path(save_whitening), "whitening files", "--save-whitening")
        check_output(Path(save_whitening))
    whiten_opts = None if whiten is None else {"source": whiten, "dim": whiten_dim, "save": save_whitening}
    from .runtime import main_process

    folder = _plot_folder(plot) if main_process() else None  # under torchrun rank 0 draws
    plots: list[str] = []
    models = list(models)
    weights = list(weights) if weights else [None] * len(models)
    if len(weights) != len(models):
        raise BadInputError(f"{len(weights)} --weights for {len(models)} models: give one per model, in order, or none")
    seed_everything(seed)
    dev = resolve_device(device)
    results = []
    from .models.spec import is_checkpoint_spec

    select = dict(classes=classes, limit=limit, max_per_class=max_per_class, seed=seed, bad_images=bad_images)
    robust = "robustness" in families
    others = [f for f in families if f != "robustness"]
    published = isinstance(data, str) and data.partition(":")[0] in ("cifar10c", "cifar10p")
    if published and others:
        raise BadInputError(
            f"{data.partition(':')[0]}:DIR holds altered images for --metrics robustness only; evaluate "
            f"{', '.join(others)} on the clean set (e.g. cifar10:PATH)"
        )
    robust_opts = (corruptions, severities, perturbations, shift, baseline, corruption_table)
    if not robust and (any(v is not None for v in robust_opts) or shift_passes != 5):
        raise BadInputError(
            "--corruptions/--severities/--perturbations/--shift/--shift-passes/--baseline are for robustness: add "
            "--metrics robustness"
        )
    baseline_index = None
    if robust and baseline is not None and _is_model_spec(baseline):
        baseline_index = next((i for i, s in enumerate(models) if _same_model(s, baseline)), None)
        if baseline_index is None:  # a model of its own: evaluated like the others, marked as the baseline
            models, weights = [*models, baseline], [*weights, None]
            baseline_index = len(models) - 1
    bundles: list[ModelBundle] = []
    plan = None
    robust_plan = dict(
        corruptions=corruptions,
        severities=severities,
        perturbations=perturbations,
        shift=shift,
        shift_passes=shift_passes,
        table=corruption_table,
        seed=seed,
    )
    for spec, w in zip(models, weights):
        opts = dict(options, **({"weights": w} if w is not None else {}))
        if isinstance(spec, (str, Path)) and is_checkpoint_spec(str(spec)):
            for key in ("pretrained", "num_classes", "in_chans"):  # these build timm:/tv:/poolcli: architectures
                opts.pop(key, None)
        bundle = load_model(spec, **opts)
        bundles.append(bundle)
        if robust:  # checked before any work: the plan (names, severities, tables, shift) and the channels
            from .pipeline import robustness as R

            plan = plan or R.make_plan(data, bundle, **robust_plan)
            R.check_channels(plan, bundles)
        warn_if_random(bundle, "evaluating")
        if not others:
            results.append({**model_record(bundle), "notes": []})
            continue
        ds = open_data(data, bundle, split="test", **select)
        notes = check_classes(bundle, ds, allow_class_mismatch, labels_vs_outputs="classification" in families)
        record = {**model_record(bundle), "dataset": getattr(ds, "description", str(data)), "notes": notes}
        record |= evaluate_one(
            bundle,
            ds,
            gallery,
            others,
            dev,
            batch_size,
            workers,
            select,
            lambda spec, split, pick, bundle=bundle: open_data(spec, bundle, split=split, **pick),
            embed_site=embed_site,
            distance=distance,
            recall_k=recall_k,
            full_map=full_map,
            seed=seed,
            whiten=whiten_opts,
        )
        results.append(record)
        if folder is not None:
            from .pipeline import evalplots

            if "confusion" in record:
                plots.append(str(evalplots.confusion(folder, len(results), record)))
            few = torch.stack([ds[j][0] for j in range(min(evalplots.IMAGES, len(ds)))])
            plots += [str(p) for p in evalplots.operator_maps(folder, len(results), bundle, few, dev)]
    robust_doc = None
    if robust:
        robust_doc = _robustness(
            data,
            bundles,
            results,
            dev,
            batch_size,
            workers,
            select,
            allow_class_mismatch,
            folder,
            plots,
            plan,
            seed,
            baseline,
            baseline_index,
        )
    comparisons = compare_models(results, seed)
    if folder is not None and "retrieval" in families:
        from .pipeline import evalplots

        plots.append(str(evalplots.recall_curves(folder, {"data": str(data), "results": results})))
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()  # a live group at interpreter exit can abort the process
    return {
        "schema": "poolcli.evaluate/3",
        "data": str(data) if isinstance(data, (str, Path)) else type(data).__name__,
        "gallery": str(gallery) if gallery is not None else None,
        "metrics": families,
        "device": str(dev),
        "batch_size": batch_size,
        "seed": seed,
        "selection": {"classes": classes, "limit": limit, "max_per_class": max_per_class},
        "definitions": {
            **METRIC_DEFINITIONS,
            **(RETRIEVAL_DEFINITIONS if "retrieval" in families else {}),
            **(ROBUSTNESS_DEFINITIONS if robust else {}),
        },
        **({"robustness_protocol": robust_doc} if robust_doc is not None else {}),
        "results": results,
        "comparisons": comparisons,
        "plots": plots,
        "environment": environment(),
    }


def _plot_folder(plot: Path | str | None) -> Path | None:
    """``--plot DIR``: an existing folder, or one made now inside an existing folder."""
    if plot is None:
        return None
    folder = Path(plot)
    if folder.exists() and not folder.is_dir():
        raise BadInputError(f"--plot {quote(folder)} is a file; evaluate writes several pictures: give a folder")
    if not folder.exists():
        if not folder.parent.is_dir():
            raise BadInputError(f"--plot {quote(folder)}: its folder {quote(folder.parent)} does not exist; create it")
        folder.mkdir()
    if not os.access(folder, os.W_OK):
        raise BadInputError(f"--plot {quote(folder)} is not writable; choose another folder")
    return folder


def _is_model_spec(text: Any) -> bool:
    """--baseline: a model spec (checkpoint file, timm:/tv:/poolcli:), not a baseline table or JSON file."""
    from .metrics.robustness import BUILTIN_BASELINES

    t = str(text)
    if t in BUILTIN_BASELINES:
        return False
    if t.partition(":")[0] in ("timm", "tv", "poolcli") or Path(t).suffix in (".safetensors", ".pt", ".pth", ".bin"):
        return True
    return not Path(t).is_file() and not t.endswith(".json")  # a missing path: let load_model name the problem


def _same_model(a: Any, b: Any) -> bool:
    """The same model spec (files compared by their resolved path)."""
    if str(a) == str(b):
        return True
    pa, pb = Path(str(a)), Path(str(b))
    return pa.is_file() and pb.is_file() and pa.resolve() == pb.resolve()


def _robustness(
    data: Any,
    bundles: list[ModelBundle],
    results: list[dict[str, Any]],
    dev: torch.device,
    batch_size: int,
    workers: int,
    select: dict[str, Any],
    allow_class_mismatch: bool,
    folder: Path | None,
    plots: list[str],
    plan: Any,
    seed: int,
    baseline: Any,
    baseline_index: int | None,
) -> dict[str, Any]:
    """evaluate's robustness family: every model (the baseline model among them, at ``baseline_index``) in one
    pass; fills each result's ``robustness`` block and paired vectors, returns the protocol."""
    from .metrics.robustness import load_baseline
    from .pipeline import robustness as R
    from .robust import corruptions as C
    from .robust import perturbations as P

    runners = list(bundles)
    base_file, base_model = None, None
    if baseline_index is not None:
        base_model = (baseline_index, runners[baseline_index].spec)
    elif baseline is not None:
        base_file = load_baseline(
            str(baseline), C.CORRUPTIONS + tuple(C.LEFT_OUT), P.PERTURBATIONS + tuple(P.LEFT_OUT), plan.table
        )
    ds, info = R.open_pixels(data, bundles[0], plan, select)
    for b, res in zip(runners, results):
        if getattr(ds, "classes", None) is not None:  # published sequences without labels.npy name no classes
            res["notes"] = list(dict.fromkeys(res["notes"] + check_classes(b, ds, allow_class_mismatch)))
        res.setdefault("dataset", getattr(ds, "description", str(data)))
    records, extra = R.run(runners, ds, plan, dev, batch_size, workers, examples=folder is not None)
    summaries = R.summarise(plan, records, base_file, base_model)
    cost = R.cost_per_image(extra, len(ds), plan)
    for i, (res, summary) in enumerate(zip(results, summaries)):
        res["robustness"] = {**summary["robustness"], "forward_ms_per_image": cost["forward_ms_per_image"][i]}
        res.setdefault("_paired", {}).update(summary["_paired"])
        res.setdefault("_items", summary["_items"])
        if base_model is not None and i == base_model[0]:
            res["role"] = "baseline"
    proto = R.protocol(plan, info, seed, batch_size)
    proto["baseline"] = base_file["source"] if base_file else (base_model[1] if base_model else None)
    if base_file is not None:
        proto["baseline_values"] = {
            "corruptions": base_file["errors"],
            "clean_error": base_file["clean_error"],
            "flip_probability": base_file["flip_probability"],
        }
    proto["cost"] = {k: v for k, v in cost.items() if k != "forward_ms_per_image"}
    if folder is not None:
        from .pipeline import evalplots

        plots += [str(p) for p in evalplots.robustness(folder, results, plan, extra["examples"])]
    return proto


def check_classes(bundle: ModelBundle, ds: Any, allow: bool, labels_vs_outputs: bool = True) -> list[str]:
    """The dataset's class names against the checkpoint's, and (``labels_vs_outputs``) its labels against the
    model's outputs (not for retrieval, whose classes are unseen by design)."""
    notes = []
    outputs = bundle.num_classes
    if labels_vs_outputs and outputs is not None and len(ds.labels) and int(ds.labels.max()) >= outputs:
        raise BadInputError(
            f"the dataset has labels up to {int(ds.labels.max())} but {bundle.spec} has {outputs} outputs; "
            "select classes with --classes, or fine-tune a model built with --num-classes"
        )
    mine, theirs = bundle.classes, list(ds.classes)
    if mine is not None and list(mine) != theirs:
        diff = next((i for i, (a, b) in enumerate(zip(mine, theirs)) if a != b), min(len(mine), len(theirs)))
        name = lambda names: quote(names[diff]) if diff < len(names) else "(missing)"  # noqa: E731
        what = f"class {diff} is {name(theirs)} in the dataset but {name(mine)} in the model"
        message = (
            f"{bundle.spec} was trained on other classes than the dataset's ({len(mine)} vs {len(theirs)} classes; "
            f"{what})"
        )
        if not allow:
            raise ClassMismatchError(f"{message}; evaluate on matching data, or pass --allow-class-mismatch")
        notes.append(message)
    return notes


def check_saveable(bundle: ModelBundle) -> None:
    if bundle.base.get("source") == "module":
        raise BadInputError(
            f"{bundle.spec} is a bare nn.Module: a checkpoint rebuilds its model from a timm:/tv:/poolcli: spec, "
            "so it cannot be written; convert it in memory (no output=) and save it with torch.save"
        )
