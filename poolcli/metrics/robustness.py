"""Robustness measures, as the benchmarks define them (pure arithmetic on predictions and error tables).

Corruptions (Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common Corruptions and
Perturbations", ICLR 2019; the ImageNet-C ``test.py`` of github.com/hendrycks/robustness): with E^f_{s,c} the
top-1 error of model f on corruption c at severity s,

* unnormalised CE_c = mean_s E^f_{s,c} (the repository's "CE (unnormalized)"), and its mean over corruptions;
* CE_c = Σ_s E^f_{s,c} / Σ_s E^b_{s,c} for a baseline b (the paper's AlexNet), mCE its mean over corruptions;
* relative CE_c = Σ_s (E^f_{s,c} − E^f_clean) / Σ_s (E^b_{s,c} − E^b_clean), relative mCE its mean.

Baselines are always matched by corruption *name*, never by position.

Perturbations (ImageNet-P / CIFAR-10-P, ``ImageNet-P/cifar-p-eval.py``): the flip probability of a sequence
x_1..x_n is the fraction of its n−1 frames whose top-1 prediction differs from the previous frame's, or, for
noise sequences (the name contains "noise"), from the first frame's; a perturbation's FP is the mean over
sequences; the flip rate FR_p = FP_p / FP^b_p. The top-5 distance of a pair of frames compares the reference
frame's top-5 classes (in order, positions i = 0..4) with their ranks r_i (0-based) in the other frame:
Σ_i |i − min(r_i, 5)|; a sequence's value is its mean over the same frame pairs as the flip probability.

Shift consistency (Zhang, "Making Convolutional Networks Shift-Invariant Again", ICML 2019): the fraction
of images whose top-1 predictions agree on two shifted copies.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ..errors import BadInputError
from ..text import quote

# Hendrycks & Dietterich's AlexNet errors on ImageNet-C, averaged over the five severities, keyed by name
# (github.com/hendrycks/robustness, ImageNet-C results spreadsheet). Normalising by these is only meaningful
# for ImageNet-C itself (or images generated with its ImageNet table).
ALEXNET_IMAGENET_C = {
    "gaussian_noise": 0.886428,
    "shot_noise": 0.894468,
    "impulse_noise": 0.922640,
    "defocus_blur": 0.819880,
    "glass_blur": 0.826268,
    "motion_blur": 0.785948,
    "zoom_blur": 0.798360,
    "snow": 0.866816,
    "frost": 0.826572,
    "fog": 0.819324,
    "brightness": 0.564592,
    "contrast": 0.853204,
    "elastic_transform": 0.646056,
    "pixelate": 0.717840,
    "jpeg_compression": 0.606500,
}
BUILTIN_BASELINES = {"alexnet-imagenet-c": ALEXNET_IMAGENET_C}
SEVERITIES = (1, 2, 3, 4, 5)

DEFINITIONS = {
    "corruption_error": "top-1 error on each (corruption, severity)",
    "unnormalized_ce": "per corruption, the mean error over the evaluated severities (Hendrycks & Dietterich's "
    "'CE (unnormalized)'); unnormalized_mce is its mean over corruptions",
    "ce": "Σ_s E_{s,c} / Σ_s E^baseline_{s,c}, matched by corruption name; mce = mean over corruptions",
    "relative_ce": "Σ_s (E_{s,c} − E_clean) / Σ_s (E^baseline_{s,c} − E^baseline_clean); relative_mce = mean",
    "flip_probability": "fraction of frames whose top-1 prediction differs from the previous frame's (noise "
    "sequences: from the first frame's), averaged over sequences (ImageNet-P/cifar-p-eval.py)",
    "flip_rate": "flip_probability / the baseline's flip_probability of the same perturbation; mfr = mean",
    "top5_distance": "mean over the same frame pairs of Σ_{i<5} |i − min(r_i, 5)|, r_i the 0-based rank in the "
    "later frame of the reference frame's i-th class (ImageNet-P mT5D's distance)",
    "consistency": "fraction of images whose top-1 predictions agree on two shifted copies (Zhang 2019), averaged "
    "over the passes",
    "diagonal_shift": "accuracy (and mean probability of the true class) at each diagonal shift (d, d)",
}


def _stable_order(logits: torch.Tensor) -> torch.Tensor:
    """Classes by decreasing logit, ties by class index (scipy ``rankdata(-x, method='ordinal')``'s order)."""
    return torch.argsort(-logits.float(), dim=-1, stable=True)


def sequence_stability(logits: torch.Tensor, to_first: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-sequence flip probability and top-5 distance of ``logits`` [n, T, K] (T ≥ 2 frames).

    ``to_first``: compare every frame with the first (noise sequences); else with the previous frame. The top-5
    distance needs K ≥ 6 classes (the published rank table has 5 ones then zeros); None below that."""
    if logits.dim() != 3 or logits.shape[1] < 2:
        raise ValueError("sequence_stability needs logits [sequences, frames ≥ 2, classes]")
    pred = logits.argmax(-1)
    ref = pred[:, :1] if to_first else pred[:, :-1]
    flips = (pred[:, 1:] != ref).double().mean(1)
    k = logits.shape[-1]
    if k < 6:
        return flips, None
    order = _stable_order(logits)  # [n, T, K]: classes by rank
    rank = torch.empty_like(order)
    rank.scatter_(-1, order, torch.arange(k, device=order.device).expand_as(order))  # class -> 0-based rank
    top = order[:, :1, :5] if to_first else order[:, :-1, :5]
    later = rank[:, 1:].gather(-1, top.expand(-1, rank.shape[1] - 1, -1) if to_first else top)
    pos = torch.arange(5, device=logits.device)
    dist = (pos - later.clamp(max=5)).abs().sum(-1).double().mean(1)
    return flips, dist


def consistency(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per image: 1.0 where the top-1 predictions of two logit batches agree."""
    return (a.argmax(-1) == b.argmax(-1)).double()


def _mean(values: Sequence[float]) -> float | None:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return sum(vals) / len(vals) if vals else None


def corruption_summary(
    errors: Mapping[str, Mapping[int, float]],
    clean_error: float | None,
    baseline: dict[str, Any] | None = None,
    benchmark: Sequence[str] = (),
) -> dict[str, Any]:
    """Everything the corruption benchmark reports from ``errors[name][severity]`` (fractions).

    ``baseline``: ``{"source": str, "errors": {name: {severity: e} | mean}, "clean_error": e | None}``, from a
    model of the same run or a file (:func:`load_baseline`); CE and relative CE use only corruptions present in
    both, matched by name. ``benchmark``: the names the published mCE averages over (to say what is missing)."""
    per = {c: {int(s): float(e) for s, e in by_s.items()} for c, by_s in errors.items()}
    out: dict[str, Any] = {
        "clean_error": clean_error,
        "errors": {c: {str(s): e for s, e in sorted(by_s.items())} for c, by_s in per.items()},
        "unnormalized_ce": {c: sum(by_s.values()) / len(by_s) for c, by_s in per.items()},
    }
    out["unnormalized_mce"] = _mean(list(out["unnormalized_ce"].values()))
    if benchmark:
        out["benchmark_missing"] = [c for c in benchmark if c not in per]
    if baseline is None:
        return out
    ce: dict[str, float | None] = {}
    rel: dict[str, float | None] = {}
    why: dict[str, str] = {}
    b_clean = baseline.get("clean_error")
    for c, by_s in per.items():
        base = baseline["errors"].get(c)
        if base is None:
            why[c] = "the baseline has no error for this corruption"
            continue
        if isinstance(base, Mapping):
            if not set(by_s) <= {int(s) for s in base}:
                why[c] = "the baseline lacks some evaluated severities"
                continue
            b_sum = sum(float(base[s] if s in base else base[str(s)]) for s in by_s)
        else:  # a mean over the five published severities: valid only when all five were evaluated
            if sorted(by_s) != list(SEVERITIES):
                why[c] = "the baseline gives a mean over severities 1-5; evaluate all five"
                continue
            b_sum = float(base) * len(SEVERITIES)
        f_sum = sum(by_s.values())
        ce[c] = f_sum / b_sum if b_sum > 0 else None
        if ce[c] is None:
            why[c] = "the baseline's error is 0"
        if clean_error is None or b_clean is None:
            rel[c] = None
        else:
            denominator = b_sum - len(by_s) * float(b_clean)
            rel[c] = (f_sum - len(by_s) * clean_error) / denominator if denominator > 0 else None
    out["baseline"] = baseline["source"]
    out["ce"] = ce
    out["mce"] = _mean(list(ce.values()))
    out["mce_over"] = [c for c, v in ce.items() if v is not None]
    out["relative_ce"] = rel
    out["relative_mce"] = _mean(list(rel.values()))
    out["relative_mce_over"] = [c for c, v in rel.items() if v is not None]
    if clean_error is None or b_clean is None:
        out["relative_ce_undefined"] = "relative CE needs the clean error of the model and of the baseline"
    elif any(v is None for v in rel.values()):
        out["relative_ce_undefined"] = {
            c: "the baseline's errors do not exceed its clean error (denominator ≤ 0)"
            for c, v in rel.items()
            if v is None
        }
    if why:
        out["ce_undefined"] = why
    return out


def perturbation_summary(
    flip: Mapping[str, float], top5: Mapping[str, float | None], baseline: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Flip probabilities and top-5 distances per perturbation, their means, and flip rates against
    ``baseline["flip_probability"]`` (matched by name)."""
    out: dict[str, Any] = {
        "flip_probability": dict(flip),
        "mean_flip_probability": _mean(list(flip.values())),
        "top5_distance": dict(top5),
        "mean_top5_distance": _mean([v for v in top5.values() if v is not None]),
    }
    if baseline is None or not baseline.get("flip_probability"):
        return out
    base = baseline["flip_probability"]
    rate = {p: (fp / float(base[p]) if base.get(p) else None) for p, fp in flip.items()}
    out |= {"baseline": baseline["source"], "flip_rate": rate, "mfr": _mean(list(rate.values()))}
    out["mfr_over"] = [p for p, v in rate.items() if v is not None]
    why = {
        p: "the baseline has no flip probability for it" if p not in base else "the baseline never flips (0)"
        for p, v in rate.items()
        if v is None
    }
    if why:
        out["flip_rate_undefined"] = why
    return out


def _number(v: Any, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)) or not 0 <= v <= 1:
        raise BadInputError(f"baseline file: {where} must be an error rate in [0, 1], got {v!r}")
    return float(v)


def load_baseline(
    path: str | Path, known: Sequence[str], perturbations: Sequence[str] = (), table: str | None = None
) -> dict[str, Any]:
    """A baseline keyed by corruption name: a built-in table (``alexnet-imagenet-c``) or a JSON file

    ``{"corruptions": {"gaussian_noise": 0.88 | [e1, .., e5] | {"1": e1, ..}, ...}, "clean_error": 0.43,
    "flip_probability": {"translate": 0.05, ...}}`` — e.g. the ``robustness`` block of an earlier
    ``poolcli evaluate --json`` run, which this also reads. Unknown names are refused (a misspelt name would
    otherwise silently drop a corruption from mCE). ``table``: the run's severity table; the AlexNet ImageNet-C
    errors normalise only errors made with the ImageNet table."""
    text = str(path)
    if text in BUILTIN_BASELINES:
        if table not in (None, "imagenet"):
            raise BadInputError(
                f"--baseline {text} holds AlexNet's ImageNet-C errors: they normalise only the ImageNet table "
                f"(images > 84 px, or --corruption-table imagenet), not this run's {table} table; give a baseline "
                "model or file instead"
            )
        return {"source": text, "errors": dict(BUILTIN_BASELINES[text]), "clean_error": None, "flip_probability": {}}
    p = Path(text)
    if not p.is_file():
        raise BadInputError(
            f"--baseline {quote(text)}: not a file or model; give a model spec, a baseline JSON, or one of "
            f"{', '.join(BUILTIN_BASELINES)}"
        )
    if p.stat().st_size > 64 << 20:
        raise BadInputError(f"baseline file {quote(text)} is larger than 64 MiB; a baseline is a small JSON")
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise BadInputError(
            f"baseline file {quote(text)} is not JSON ({type(e).__name__}): give a baseline JSON"
        ) from None
    if isinstance(doc, dict) and isinstance(doc.get("results"), list):  # a whole evaluate report: its first model
        if not doc["results"] or not isinstance(doc["results"][0], dict) or "robustness" not in doc["results"][0]:
            raise BadInputError(f"baseline file {quote(text)} holds no robustness results")
        doc = doc["results"][0]["robustness"]
    if isinstance(doc, dict) and "clean_error" in doc and ("perturbations" in doc or "shift" in doc or "images" in doc):
        block = doc.get("corruptions") if isinstance(doc.get("corruptions"), dict) else {}
        pert = doc.get("perturbations") if isinstance(doc.get("perturbations"), dict) else {}
        doc = {  # the robustness block of a report: its errors and flip probabilities
            "corruptions": block.get("errors", {}),
            "clean_error": doc.get("clean_error"),
            "flip_probability": pert.get("flip_probability", {}),
        }
    if not isinstance(doc, dict) or not isinstance(doc.get("corruptions", {}), dict):
        raise BadInputError(f"baseline file {quote(text)}: expected an object with a 'corruptions' object by name")
    if not isinstance(doc.get("flip_probability") or {}, dict):
        raise BadInputError(f"baseline file {quote(text)}: 'flip_probability' must be an object by perturbation name")
    errors: dict[str, Any] = {}
    for name, v in (doc.get("corruptions") or {}).items():
        if name not in known:
            raise BadInputError(
                f"baseline file {quote(text)}: unknown corruption {quote(name)}; names are {', '.join(known)}"
            )
        if isinstance(v, list):
            if len(v) != len(SEVERITIES):
                raise BadInputError(f"baseline file: {name} lists {len(v)} errors; give 5 (severities 1-5) or a mean")
            errors[name] = {s: _number(e, f"{name}[{s}]") for s, e in zip(SEVERITIES, v)}
        elif isinstance(v, dict):
            by_s = {}
            for s, e in v.items():
                if str(s) not in {str(k) for k in SEVERITIES}:
                    raise BadInputError(f"baseline file: {name} has severity {quote(str(s))}; severities are 1-5")
                by_s[int(s)] = _number(e, f"{name}[{s}]")
            errors[name] = by_s
        else:
            errors[name] = _number(v, name)
    flips = {}
    for name, v in (doc.get("flip_probability") or {}).items():
        if perturbations and name not in perturbations:
            raise BadInputError(
                f"baseline file {quote(text)}: unknown perturbation {quote(name)}; names are {', '.join(perturbations)}"
            )
        flips[name] = _number(v, f"flip_probability.{name}")
    clean = doc.get("clean_error")
    if not errors and not flips:
        raise BadInputError(f"baseline file {quote(text)} holds no corruption errors or flip probabilities")
    return {
        "source": text,
        "errors": errors,
        "clean_error": None if clean is None else _number(clean, "clean_error"),
        "flip_probability": flips,
    }
