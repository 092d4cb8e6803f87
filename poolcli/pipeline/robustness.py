"""evaluate --metrics robustness: corruption errors, perturbation flips and shift consistency of several models in
one pass over the data.

Each batch of images is loaded once as pixels in [0, 1] (at the first model's geometry, without normalisation),
corrupted / perturbed / shifted once, and every model sees the *same* altered pixels through its own
normalisation (and a resize when its input size differs): a paired comparison. All randomness is per image,
from a generator seeded by the run seed, the alteration's name and severity and the image's index in its
dataset, so an image's corruption does not depend on its batch: under ``torchrun`` ranks take images
i ≡ rank (mod world), and the per-image records gathered and put back in dataset order give exactly the
one-process numbers.

With ``--data cifar10c:DIR`` / ``cifar10p:DIR`` the corrupted images / frame sequences are read from the
published arrays instead of generated (:mod:`poolcli.data.published`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import Dataset, Subset

from ..data.transforms import to_float
from ..errors import BadInputError, RunError
from ..metrics import robustness as rm
from ..models.bundle import ModelBundle
from ..robust import corruptions as C
from ..robust import perturbations as P
from ..robust import shift as S
from ..runtime import init_distributed
from ..text import quote

# the perturbations cifar-p-eval.py averages over (github.com/hendrycks/robustness, ImageNet-P/cifar-p-eval.py)
PUBLISHED_PERTURBATIONS = (
    "gaussian_noise",
    "shot_noise",
    "motion_blur",
    "zoom_blur",
    "spatter",
    "brightness",
    "translate",
    "rotate",
    "tilt",
    "scale",
)
SHIFT_PASSES = 5  # Zhang's --epochs-shift


@dataclasses.dataclass
class Plan:
    corruptions: list[str]
    severities: list[int]
    perturbations: list[str]
    shift: int | None  # S: the largest shift; None: no shift consistency
    shift_passes: int
    table: str  # the corruption / perturbation parameter table
    table_chosen: str  # how: "auto (…)" or "--corruption-table"
    shift_protocol: str  # small | large
    seed: int
    corruption_arrays: Any = None  # CorruptionArrays for cifar10c:DIR
    perturbation_arrays: Any = None  # PerturbationArrays for cifar10p:DIR
    dropped: dict[str, str] = dataclasses.field(default_factory=dict)  # defaults left out, with the reason


def _names(
    text: str | Sequence[str] | None,
    implemented: Sequence[str],
    defaults: Sequence[str],
    left_out: dict[str, str],
    option: str,
) -> list[str]:
    if text is None:
        return list(defaults)
    items = [t.strip() for t in (text.split(",") if isinstance(text, str) else text) if str(t).strip()]
    if not items:
        raise BadInputError(f"{option} is empty: give names, all or none")
    if items == ["none"]:
        return []
    if items == ["all"]:
        return list(implemented)
    if {"all", "none"} & set(items):
        raise BadInputError(f"{option}: all and none stand alone; give one of them, or a list of names")
    out = []
    for name in items:
        if name in left_out:
            raise BadInputError(f"{option}: {name} is not generated ({left_out[name]}); leave it out")
        if name not in implemented:
            raise BadInputError(
                f"{option}: unknown name {quote(name)}; use all, none or some of {', '.join(implemented)}"
            )
        out.append(name)
    return list(dict.fromkeys(out))


def parse_severities(text: str | Sequence[int] | None) -> list[int]:
    if text is None:
        return list(rm.SEVERITIES)
    try:
        if isinstance(text, str):
            vals: list[int] = []
            for part in text.split(","):
                a, sep, b = part.strip().partition("-")
                lo, hi = (int(a), int(b)) if sep else (int(a), int(a))
                if not 1 <= lo <= hi <= 5:
                    raise ValueError
                vals.extend(range(lo, hi + 1))
        else:
            vals = [int(v) for v in text]
    except ValueError:
        raise BadInputError(f"bad --severities {text!r}: give severities 1-5, e.g. 1-5 or 1,3,5") from None
    if not vals or min(vals) < 1 or max(vals) > 5:
        raise BadInputError(f"bad --severities {text!r}: severities run from 1 to 5, e.g. 1-5 or 1,3,5")
    return sorted(set(vals))


def make_plan(
    data: Any,
    first: ModelBundle,
    *,
    corruptions: str | Sequence[str] | None,
    severities: str | Sequence[int] | None,
    perturbations: str | Sequence[str] | None,
    shift: int | str | None,
    shift_passes: int,
    table: str | None,
    seed: int,
) -> Plan:
    """What the robustness pass will do, checked before any work: names, severities, tables, shift."""
    from ..data.published import CorruptionArrays, PerturbationArrays

    kind, _, rest = str(data).partition(":") if isinstance(data, str) else ("", "", "")
    c_arrays = CorruptionArrays(rest, C.CORRUPTIONS + tuple(C.LEFT_OUT)) if kind == "cifar10c" else None
    p_arrays = PerturbationArrays(rest, P.PERTURBATIONS + tuple(P.LEFT_OUT)) if kind == "cifar10p" else None
    if c_arrays is None and p_arrays is None and not isinstance(data, str):
        raise BadInputError(
            "--metrics robustness needs a data spec (e.g. digits:test, folder:DIR), not a Python dataset"
        )
    sevs = parse_severities(severities)
    channels, h, w = first.transform.input_size if c_arrays is None and p_arrays is None else (3, 32, 32)
    if c_arrays is not None or p_arrays is not None:
        h, w, channels = (c_arrays or p_arrays).image_shape
    dropped: dict[str, str] = {}
    if table is not None and table not in C.TABLES:
        raise BadInputError(f"--corruption-table must be auto, {' or '.join(C.TABLES)}, not {quote(table)}")
    chosen = table or C.table_for(h, w)
    how = "--corruption-table" if table else f"auto: {h}×{w} images, cifar up to 84 px, else imagenet"
    if c_arrays is not None:
        corr = _names(corruptions, c_arrays.names, c_arrays.names, {}, "--corruptions")
        pert: list[str] = []
        if perturbations not in (None, "none"):
            raise BadInputError(
                "--perturbations needs clean images: cifar10c:DIR holds corrupted ones; use cifar10p:DIR"
            )
    elif p_arrays is not None:
        pert = _names(perturbations, p_arrays.names, p_arrays.names, {}, "--perturbations")
        corr = []
        if corruptions not in (None, "none"):
            raise BadInputError(
                "--corruptions needs clean images: cifar10p:DIR holds frame sequences; use cifar10c:DIR"
            )
    else:
        bench = [c for c in C.BENCHMARK if c in C.CORRUPTIONS]
        corr = _names(corruptions, C.CORRUPTIONS, bench, C.LEFT_OUT, "--corruptions")
        dropped |= {c: C.LEFT_OUT[c] for c in C.BENCHMARK if c in C.LEFT_OUT and corruptions is None}
        grey = [c for c in corr if channels == 1 and C.needs_colour(c)]
        if grey and corruptions not in (None, "all"):
            raise BadInputError(
                f"--corruptions: {grey[0]} needs colour images but the model takes 1 channel; leave it out"
            )
        dropped |= {c: "needs colour images; the model takes 1 channel" for c in grey}
        corr = [c for c in corr if c not in grey]
        published = [p for p in PUBLISHED_PERTURBATIONS if p in P.PERTURBATIONS]
        pert = _names(perturbations, P.PERTURBATIONS, published, P.LEFT_OUT, "--perturbations")
        dropped |= {p: P.LEFT_OUT[p] for p in PUBLISHED_PERTURBATIONS if p in P.LEFT_OUT and perturbations is None}
    protocol = S.protocol_for(h, w)
    if isinstance(shift, str):
        if shift == "none":
            shift = None
        else:
            try:
                shift = int(shift)
            except ValueError:
                raise BadInputError(f"bad --shift {shift!r}: give the largest shift in pixels, or none") from None
    elif shift is None and c_arrays is None and p_arrays is None:
        shift = S.DEFAULT_SHIFT[protocol]
    if shift is not None and (c_arrays is not None or p_arrays is not None):
        raise BadInputError("--shift needs clean images; the published arrays hold altered ones: use --shift none")
    if shift is not None and not 1 <= shift <= min(h, w):
        raise BadInputError(f"--shift must be between 1 and the image side ({min(h, w)}), got {shift}")
    if not 1 <= shift_passes <= 100:
        raise BadInputError(f"--shift-passes must be between 1 and 100, got {shift_passes}")
    if not corr and not pert and shift is None:
        raise BadInputError("nothing to measure: give --corruptions, --perturbations or --shift")
    return Plan(corr, sevs, pert, shift, shift_passes, chosen, how, protocol, seed, c_arrays, p_arrays, dropped)


def check_channels(plan: Plan, bundles: Sequence[ModelBundle]) -> None:
    """The alterations are defined on grey or RGB pixels, and every model must take those (or grey/one channel,
    adapted by repetition or the channel mean)."""
    arrays = plan.corruption_arrays or plan.perturbation_arrays
    c = arrays.image_shape[-1] if arrays is not None else bundles[0].transform.input_size[0]
    if c not in (1, 3):
        raise BadInputError(
            f"{bundles[0].spec} takes {c}-channel images; corruptions and perturbations are defined on grey or RGB "
            "images: evaluate robustness with a 1- or 3-channel model first"
        )
    for b in bundles:
        m = b.transform.input_size[0]
        if m not in (c, 1) and c != 1:
            raise BadInputError(
                f"{b.spec} takes {m}-channel images but the altered images are {c}-channel; evaluate it in a "
                "separate run"
            )


def image_seeds(seed: int, what: str, index: torch.Tensor) -> list[int]:
    """Image i's seed for alteration ``what``: independent of batches and ranks."""
    base = int.from_bytes(hashlib.blake2b(f"{seed}/{what}".encode(), digest_size=7).digest(), "little")
    return [(base + 1_000_003 * int(i)) % (1 << 62) for i in index.tolist()]


class _Pixels(Dataset):
    """(pixels in [0, 1], label, dataset index, the shift canvas or empty) of the selected images."""

    def __init__(self, ds: Any, canvas: Any):
        self.ds, self.canvas = ds, canvas

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int):
        j = int(self.ds.indices[i])
        img = self.ds.raw.get_image(j)
        big = self.canvas(img) if self.canvas is not None else torch.empty(0)
        return self.ds.preprocess(img), int(self.ds.raw.labels[j]), j, big


class _Indices(Dataset):
    """(empty, label, index, empty): the published arrays are read per alteration."""

    def __init__(self, arrays: Any, indices: torch.Tensor):
        self.all_labels, self.indices = arrays.labels, indices
        self.labels, self.classes = arrays.labels[indices], arrays.classes  # of the selection (class checks)
        self.description = arrays.description

    def __len__(self) -> int:
        return int(self.indices.numel())

    def __getitem__(self, i: int):
        j = int(self.indices[i])
        return torch.empty(0), int(self.all_labels[j]), j, torch.empty(0)


def open_pixels(data: Any, first: ModelBundle, plan: Plan, select: dict[str, Any]) -> tuple[Dataset, dict[str, Any]]:
    """The images of the pass and what describes them."""
    from ..data.specs import open_dataset, parse_classes, select_indices
    from ..data.transforms import Preprocess

    arrays = plan.corruption_arrays or plan.perturbation_arrays
    if arrays is not None:
        cls = parse_classes(select["classes"]) if isinstance(select["classes"], str) else select["classes"]
        for what, v in (("--limit", select["limit"]), ("--max-per-class", select["max_per_class"])):
            if v is not None and v < 1:
                raise BadInputError(f"{what} must be ≥ 1, got {v}")
        idx = select_indices(arrays.labels, cls, select["limit"], select["max_per_class"], select["seed"])
        if idx.numel() == 0:
            raise BadInputError(f"{arrays.description} is empty after selection; widen the selection")
        ds = _Indices(arrays, idx)
        return ds, {"arrays": arrays.describe(), "images": len(ds)}
    prep = first.transform
    if not isinstance(prep, Preprocess):
        raise BadInputError(f"{first.spec} takes pre-made inputs; robustness needs a model with image preprocessing")
    c, h, w = prep.input_size
    zeros, ones = (0.0,) * c, (1.0,) * c
    pixels = Preprocess(prep.input_size, zeros, ones, prep.geometry)
    canvas = None
    if plan.shift is not None and plan.shift_protocol == "large":
        s = plan.shift
        geometry = dataclasses.replace(prep.geometry, crop_pct=1.0, resize=None)
        canvas = Preprocess((c, h + 2 * s, w + 2 * s), zeros, ones, geometry)
    ds = open_dataset(str(data), transform=pixels, default_split="test", **select)
    if ds.raw.channels == 1 and c == 3:  # grey images repeated to RGB: colour corruptions would do nothing
        grey = [n for n in plan.corruptions if C.needs_colour(n)]
        plan.dropped |= {n: "needs colour images; the data are grey" for n in grey}
        plan.corruptions = [n for n in plan.corruptions if n not in grey]
        if not plan.corruptions and not plan.perturbations and plan.shift is None:
            raise BadInputError("nothing to measure: the chosen corruptions need colour images and the data are grey")
    out = _Pixels(ds, canvas)
    out.labels, out.classes = ds.labels, ds.classes  # type: ignore[attr-defined]
    out.description = getattr(ds, "description", str(data))  # type: ignore[attr-defined]
    info = {"pixels": {**pixels.describe(), "mean": None, "std": None}, "images": len(out)}
    if canvas is not None:
        info["shift_canvas"] = {**canvas.describe(), "mean": None, "std": None}
    return out, info


class _Models:
    """The models of the pass: each batch of pixels through every model's own normalisation."""

    def __init__(self, bundles: Sequence[ModelBundle], dev: torch.device, batch_size: int):
        self.bundles, self.dev, self.batch = list(bundles), dev, batch_size
        self.forward_s = [0.0] * len(bundles)
        for b in self.bundles:
            b.module.eval().to(dev)

    @torch.inference_mode()
    def logits(self, m: int, x: torch.Tensor, what: str = "altered") -> torch.Tensor:
        b = self.bundles[m]
        out = []
        for chunk in x.split(self.batch):
            t0 = time.perf_counter()
            y = b.module(b.transform.from_pixels(chunk.to(self.dev, non_blocking=True)))
            if self.dev.type == "cuda":
                torch.cuda.synchronize(self.dev)
            self.forward_s[m] += time.perf_counter() - t0
            if y.dim() != 2:
                raise BadInputError(
                    f"{b.spec} outputs shape {list(y.shape)}; robustness needs a classifier [batch, classes]"
                )
            out.append(y.float().cpu())
        logits = torch.cat(out)
        if not bool(torch.isfinite(logits).all()):
            raise RunError(
                f"{b.spec} gives NaN/inf outputs on {what} images; check its weights and preprocessing (--mean/--std); "
                "no robustness is reported from them"
            )
        return logits


def run(
    bundles: Sequence[ModelBundle],
    ds: Dataset,
    plan: Plan,
    dev: torch.device,
    batch_size: int,
    workers: int,
    examples: bool = False,
) -> tuple[list[dict[str, torch.Tensor]], dict[str, Any]]:
    """The pass: per model, per-image records in dataset order (gathered from every rank under torchrun), and
    the cost of generation vs the forwards (and example images when ``examples``)."""
    from ..data.specs import make_loader
    from ..progress import task

    rank, world = init_distributed()
    mine = list(range(rank, len(ds), world)) if world > 1 else list(range(len(ds)))
    models = _Models(bundles, dev, batch_size)
    recs: list[dict[str, list]] = [defaultdict(list) for _ in bundles]
    gen_s: dict[str, float] = defaultdict(float)
    shown: dict[str, Any] = {}
    n_pos = 0
    with task(f"robustness ({len(bundles)} models)", len(ds), scale=world) as advance:
        loader = make_loader(Subset(ds, mine), batch_size, workers) if mine else []
        for pix, y, idx, big in loader:
            b = int(y.numel())
            positions = torch.tensor(mine[n_pos : n_pos + b])
            n_pos += b
            for r in recs:
                r["position"].append(positions)
                r["label"].append(y)
            have = pix.numel() > 0
            if have:
                for m in range(len(bundles)):
                    lg = models.logits(m, pix, "clean")
                    recs[m]["clean"].append(lg.argmax(1) == y)
            _corruptions(plan, models, recs, pix if have else None, y, idx, gen_s, shown if examples else None)
            _perturbations(plan, models, recs, pix if have else None, idx, gen_s, shown if examples else None)
            if plan.shift is not None:
                _shift(plan, models, recs, pix, big, y, idx, gen_s)
            advance(b)
    records = [{k: torch.cat(v) for k, v in r.items()} for r in recs]
    forward_s = list(models.forward_s)
    if world > 1:
        import torch.distributed as dist

        parts: list = [None] * world
        dist.all_gather_object(parts, (records, forward_s, dict(gen_s)))
        records = []
        for m in range(len(bundles)):
            pieces = [p[0][m] for p in parts if p[0][m]]
            merged = {k: torch.cat([q[k] for q in pieces]) for k in pieces[0]}
            order = merged["position"].argsort()
            records.append({k: v[order] for k, v in merged.items()})
        forward_s = [max(p[1][m] for p in parts) for m in range(len(bundles))]
        gen_s = defaultdict(float, {k: max(p[2].get(k, 0.0) for p in parts) for k in gen_s})
    cost = {"generation_seconds": dict(gen_s), "forward_seconds": forward_s}
    return records, {"cost": cost, "examples": shown}


def _corruptions(plan, models, recs, pix, y, idx, gen_s, shown) -> None:
    if not plan.corruptions:
        return
    correct = [torch.zeros(len(y), len(plan.corruptions), len(plan.severities), dtype=torch.bool) for _ in recs]
    for ci, name in enumerate(plan.corruptions):
        for si, sev in enumerate(plan.severities):
            t0 = time.perf_counter()
            if pix is None:
                xc = to_float(plan.corruption_arrays.images(name, sev, idx))
            else:
                xc = C.corrupt(name, pix, sev, image_seeds(plan.seed, f"{name}/{sev}", idx), plan.table)
            gen_s[f"corruption/{name}"] += time.perf_counter() - t0
            if shown is not None:
                row = shown.setdefault("corruptions", {}).setdefault(name, {})
                if not row and pix is not None:
                    row[0] = pix[0].clone()
                row.setdefault(sev, xc[0].clone())
            for m in range(len(recs)):
                correct[m][:, ci, si] = models.logits(m, xc).argmax(1) == y
    for m, r in enumerate(recs):
        r["corrupt"].append(correct[m])


def _perturbations(plan, models, recs, pix, idx, gen_s, shown) -> None:
    if not plan.perturbations:
        return
    n = len(idx)
    flips = [torch.zeros(n, len(plan.perturbations), dtype=torch.float64) for _ in recs]
    top5 = [torch.full((n, len(plan.perturbations)), float("nan"), dtype=torch.float64) for _ in recs]
    for pi, name in enumerate(plan.perturbations):
        t0 = time.perf_counter()
        if pix is None:
            seq = to_float(plan.perturbation_arrays.sequences(name, idx))
        else:
            seq = P.sequence(name, pix, image_seeds(plan.seed, name, idx), plan.table)
        gen_s[f"perturbation/{name}"] += time.perf_counter() - t0
        if shown is not None:
            shown.setdefault("perturbations", {}).setdefault(name, seq[0].clone())
        t = seq.shape[1]
        to_first = P.compares_to_first(name)
        for m in range(len(recs)):
            lg = models.logits(m, seq.flatten(0, 1)).view(n, t, -1)
            fp, t5 = rm.sequence_stability(lg, to_first)
            flips[m][:, pi] = fp
            if t5 is not None:
                top5[m][:, pi] = t5
    for m, r in enumerate(recs):
        r["flip"].append(flips[m])
        r["top5"].append(top5[m])


def _shift(plan, models, recs, pix, big, y, idx, gen_s) -> None:
    s = plan.shift
    h, w = pix.shape[-2:]
    t0 = time.perf_counter()
    canvas = S.padded(pix, s) if plan.shift_protocol == "small" else big
    span = 2 * s + 1 if plan.shift_protocol == "small" else 2 * s
    pairs = []
    for k in range(plan.shift_passes):
        offs = S.random_offsets(image_seeds(plan.seed, f"shift/{k}", idx), span)
        pairs.append((S.windows(canvas, offs[:, 0], (h, w)), S.windows(canvas, offs[:, 1], (h, w))))
    diag = [S.windows(canvas, torch.full((len(y), 2), d, dtype=torch.long), (h, w)) for d in range(2 * s + 1)]
    gen_s["shift"] += time.perf_counter() - t0
    for m, r in enumerate(recs):
        agree = torch.stack([rm.consistency(models.logits(m, a), models.logits(m, b)) for a, b in pairs], 1)
        r["consistent"].append(agree)
        hits, probs = [], []
        for x in diag:
            lg = models.logits(m, x)
            hits.append(lg.argmax(1) == y)
            probs.append(lg.softmax(1).gather(1, y[:, None]).squeeze(1).double())
        r["diag_correct"].append(torch.stack(hits, 1))
        r["diag_prob"].append(torch.stack(probs, 1))


def summarise(
    plan: Plan,
    records: list[dict[str, torch.Tensor]],
    baseline: dict[str, Any] | None,
    baseline_model: tuple[int, str] | None = None,
) -> list[dict[str, Any]]:
    """Per model, the robustness block of the report (and its per-image vectors for paired comparisons)."""
    per_model = []
    for r in records:
        out: dict[str, Any] = {}
        clean = 1.0 - float(r["clean"].double().mean()) if "clean" in r else None
        errors = {}
        if "corrupt" in r:
            acc = r["corrupt"].double().mean(0)  # [corruptions, severities]
            errors = {
                c: {s: 1.0 - float(acc[ci, si]) for si, s in enumerate(plan.severities)}
                for ci, c in enumerate(plan.corruptions)
            }
        flips, top5 = {}, {}
        if "flip" in r:
            for pi, p in enumerate(plan.perturbations):
                flips[p] = float(r["flip"][:, pi].mean())
                col = r["top5"][:, pi]
                top5[p] = None if bool(col.isnan().all()) else float(col.mean())
        out["_raw"] = (clean, errors, flips, top5)
        per_model.append(out)
    if baseline_model is not None:  # a model of this run
        clean_b, errors_b, flips_b, _ = per_model[baseline_model[0]]["_raw"]
        baseline = {
            "source": baseline_model[1],
            "errors": errors_b,
            "clean_error": clean_b,
            "flip_probability": flips_b,
        }
    results = []
    for out, r in zip(per_model, records):
        clean, errors, flips, top5 = out.pop("_raw")
        block: dict[str, Any] = {"clean_error": clean}
        if errors:
            block["corruptions"] = rm.corruption_summary(errors, clean, baseline, benchmark=C.BENCHMARK)
        if flips:
            block["perturbations"] = rm.perturbation_summary(flips, top5, baseline)
        paired: dict[str, torch.Tensor] = {}
        if "corrupt" in r:
            paired["robustness.corruption_accuracy"] = r["corrupt"].double().mean((1, 2))
        if "flip" in r:
            paired["robustness.flip_probability"] = r["flip"].mean(1)
        if "consistent" in r:
            per_pass = r["consistent"].mean(0)
            block["shift"] = {
                "consistency": float(per_pass.mean()),
                "consistency_per_pass": [float(v) for v in per_pass],
                "diagonal_offsets": list(range(2 * plan.shift + 1)),
                "diagonal_shift": [d - plan.shift for d in range(2 * plan.shift + 1)],  # from the centre window
                "diagonal_accuracy": [float(v) for v in r["diag_correct"].double().mean(0)],
                "diagonal_true_class_probability": [float(v) for v in r["diag_prob"].mean(0)],
            }
            paired["robustness.consistency"] = r["consistent"].mean(1)
        block["images"] = int(r["label"].numel())
        results.append({"robustness": block, "_paired": paired, "_items": r["label"]})
    return results


def protocol(plan: Plan, info: dict[str, Any], seed: int, batch_size: int) -> dict[str, Any]:
    """Everything needed to regenerate the altered images."""
    arrays = plan.corruption_arrays is not None or plan.perturbation_arrays is not None
    out: dict[str, Any] = {
        "table": None if arrays else plan.table,
        "table_chosen": "the published arrays (nothing generated)" if arrays else plan.table_chosen,
        "seed": seed,
        "image_seeds": "image j's generator: torch manual_seed((B + 1000003·j) mod 2^62), j its index in the dataset, "
        "B = int.from_bytes(blake2b(f'{seed}/{key}'.encode(), digest_size=7).digest(), 'little'), key "
        "'{corruption}/{severity}', '{perturbation}' or 'shift/{pass}'; independent of batches and ranks",
        **({"severities": plan.severities} if plan.corruptions else {}),
        "batch_size": batch_size,
        **{k: v for k, v in info.items() if k not in ("cost", "examples")},
        "models_see": "the same altered pixels, each through its own normalisation (resized bilinearly when its "
        "input size differs from the first model's)",
    }
    if plan.corruptions:
        out["corruptions"] = plan.corruptions
        if plan.corruption_arrays is None:
            out["corruption_parameters"] = {
                c: {str(s): C.parameters(c, s, plan.table) for s in plan.severities} for c in plan.corruptions
            }
    if plan.perturbations:
        out["perturbations"] = plan.perturbations
        out["flip_rule"] = {
            p: "first frame" if P.compares_to_first(p) else "previous frame" for p in plan.perturbations
        }
        if plan.perturbation_arrays is None:
            out["perturbation_parameters"] = {p: P.parameters(p, plan.table) for p in plan.perturbations}
    if plan.shift is not None:
        out["shift"] = {
            "protocol": plan.shift_protocol,
            "max_shift": plan.shift,
            "passes": plan.shift_passes,
            "canvas": "zero padding by S (small images)"
            if plan.shift_protocol == "small"
            else "resize to H+2S, centre crop (H+2S)×(W+2S) (Zhang's 256 for 224); its centre window is the model's "
            "own preprocessing only when H / crop_pct = H+2S",
            "diagonal": "windows at offsets (d, d), d = 0..2S; shifts d − S from the centre window",
            "offsets": f"uniform on {{0..{2 * plan.shift - (plan.shift_protocol == 'large')}}}², "
            "two per image per pass",
        }
    if plan.dropped:
        out["left_out"] = plan.dropped
    return out


def cost_per_image(info: dict[str, Any], n: int, plan: Plan) -> dict[str, Any]:
    """Milliseconds to make one altered image (a corrupted image, a sequence frame, a shifted window; read from
    the arrays for cifar10c/cifar10p) vs each model's milliseconds per forward of one image, in this run."""
    frames = {
        p: plan.perturbation_arrays.frames[p] if plan.perturbation_arrays is not None else P.frames(p, plan.table)
        for p in plan.perturbations
    }
    made = {f"corruption/{c}": len(plan.severities) for c in plan.corruptions}
    made |= {f"perturbation/{p}": t for p, t in frames.items()}
    forwards = sum(made.values()) + (0 if plan.corruption_arrays or plan.perturbation_arrays else 1)
    if plan.shift is not None:
        made["shift"] = 2 * plan.shift_passes + 2 * plan.shift + 1
        forwards += made["shift"]
    gen = info["cost"]["generation_seconds"]
    return {
        "generation_ms_per_image": {k: 1000 * v / (n * made[k]) for k, v in gen.items()},
        "forward_ms_per_image": [1000 * v / (n * forwards) for v in info["cost"]["forward_seconds"]],
        "forwards_per_image": forwards,
    }
