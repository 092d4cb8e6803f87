"""poolcli evaluate: classification, retrieval, separability and robustness metrics of one or more models."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Optional

import typer
from rich.table import Table

from ..errors import BadInputError
from .app import app
from .common import (
    STATE,
    BadImagesOpt,
    BatchOpt,
    ClassesOpt,
    DataOpt,
    DeviceOpt,
    JsonOpt,
    LimitOpt,
    MaxPerClassOpt,
    SeedOpt,
    WorkersOpt,
    console,
    emit_json,
    model_options,
)


@app.command("evaluate")
@model_options
def evaluate_cmd(
    models: Annotated[
        list[str],
        typer.Argument(metavar="MODEL...", help="One or more models (checkpoint, timm:NAME, tv:NAME, poolcli:NAME)."),
    ],
    data: DataOpt = "digits:test",
    weights: Annotated[
        Optional[list[Path]],
        typer.Option(
            "--weights",
            metavar="FILE",
            help="Weights file for each model, in order (repeat it once per model).",
        ),
    ] = None,
    device: DeviceOpt = "auto",
    batch_size: BatchOpt = 128,
    workers: WorkersOpt = 0,
    seed: SeedOpt = 0,
    classes: ClassesOpt = None,
    limit: LimitOpt = None,
    max_per_class: MaxPerClassOpt = None,
    bad_images: BadImagesOpt = "error",
    allow_class_mismatch: Annotated[
        bool,
        typer.Option(
            "--allow-class-mismatch",
            "--ignore-class-names",
            help="Evaluate a checkpoint on data whose class names differ from its own (e.g. retrieval of classes "
            "it was not trained on).",
        ),
    ] = False,
    metrics: Annotated[
        str,
        typer.Option(
            "--metrics",
            metavar="FAMILIES",
            help="Comma list of metric families: classification (top-1/5, macro, NLL, ECE), retrieval (P@1, "
            "R@K, R-precision, MAP@R, MAP, MRR, NMI/AMI of the embeddings), separability (S_b/S_w of seed 001 "
            "eq. 8 and tr(S_w⁻¹S_b) of the embeddings), robustness (corruption errors and CE, perturbation flip "
            "probabilities, shift consistency: all models in one pass). One pass over the data feeds all.",
        ),
    ] = "classification",
    embed_site: Annotated[
        Optional[str],
        typer.Option(
            "--embed-site",
            metavar="SITE",
            help="Embedding for retrieval: this site's output (spatial mean of a map); default the pre-logit "
            "features (the classifier's input).",
        ),
    ] = None,
    distance: Annotated[
        Literal["cosine", "euclidean"],
        typer.Option("--distance", help="Retrieval ranking: cosine of L2-normalised embeddings, or euclidean."),
    ] = "cosine",
    ranking: Annotated[
        Literal["full", "top"],
        typer.Option(
            "--ranking",
            help="full: sort every query's whole ranking (adds MAP over all items and MRR); top: only the top "
            "max(R_q, K) (P@1, R@K, R-precision, MAP@R; faster for large galleries).",
        ),
    ] = "full",
    recall_k: Annotated[
        str, typer.Option("--recall-k", metavar="K,K,...", help="Recall@K cut-offs for retrieval.")
    ] = "1,2,4,8",
    query: Annotated[
        Optional[str],
        typer.Option("--query", metavar="SPEC", help="The query set for --gallery retrieval (the same as --data)."),
    ] = None,
    gallery: Annotated[
        Optional[str],
        typer.Option(
            "--gallery",
            metavar="SPEC",
            help="Retrieval against this gallery with --data as the queries (In-Shop style); default "
            "leave-one-out on --data.",
        ),
    ] = None,
    whiten: Annotated[
        Optional[str],
        typer.Option(
            "--whiten",
            metavar="SPEC|FILE",
            help="Retrieval descriptors through L2 → PCA-whitening → L2, fitted on this data (e.g. digits:train) "
            "or read from a file saved with --save-whitening.",
        ),
    ] = None,
    whiten_dim: Annotated[
        Optional[int], typer.Option("--dim", metavar="D", help="Components kept by --whiten (default all).")
    ] = None,
    save_whitening: Annotated[
        Optional[Path],
        typer.Option("--save-whitening", metavar="FILE", help="Save the whitening fitted by --whiten (one model)."),
    ] = None,
    plot: Annotated[
        Optional[Path],
        typer.Option(
            "--plot",
            metavar="DIR",
            help="Folder for pictures: Recall@K curves, confusion matrices, learned operators on a few images.",
        ),
    ] = None,
    corruptions: Annotated[
        Optional[str],
        typer.Option(
            "--corruptions",
            metavar="NAMES",
            help="robustness: corruptions to generate (comma list, all, none); default the CIFAR-10-C/ImageNet-C "
            "benchmark ones that can be made here.",
        ),
    ] = None,
    severities: Annotated[
        Optional[str], typer.Option("--severities", metavar="S", help="robustness: severities, e.g. 1-5 or 1,3,5.")
    ] = None,
    perturbations: Annotated[
        Optional[str],
        typer.Option(
            "--perturbations",
            metavar="NAMES",
            help="robustness: perturbation sequences (comma list, all, none); default the CIFAR-10-P evaluation's.",
        ),
    ] = None,
    shift: Annotated[
        Optional[str],
        typer.Option(
            "--shift",
            metavar="S|none",
            help="robustness: shift consistency with shifts up to S pixels (default 4 for small images, 16 for "
            "large: Zhang's 256→224 crops), or none.",
        ),
    ] = None,
    shift_passes: Annotated[
        int, typer.Option("--shift-passes", metavar="N", help="robustness: passes of random shift pairs (Zhang: 5).")
    ] = 5,
    baseline: Annotated[
        Optional[str],
        typer.Option(
            "--baseline",
            metavar="MODEL|FILE",
            help="robustness: normalise CE and flip rates by this model (run in the same pass), a JSON keyed by "
            "corruption name (or an earlier --json report), or alexnet-imagenet-c.",
        ),
    ] = None,
    corruption_table: Annotated[
        Literal["auto", "cifar", "imagenet"],
        typer.Option(
            "--corruption-table",
            help="robustness: published severity parameters: cifar (32 px), imagenet (224 px), or auto by image size.",
        ),
    ] = "auto",
    json_out: JsonOpt = False,
    model_opts: dict | None = None,
) -> None:
    """Classification, retrieval, separability and robustness metrics of each model on a dataset.

    Example: poolcli evaluate fixtures/digits-cnn.safetensors fixtures/digits-resnet.safetensors
    --data digits:test --metrics classification,retrieval --json
    """
    from .. import api

    if query is not None:
        if data != "digits:test" and data != query:
            raise BadInputError("--query and --data both name the evaluated set: give one of them")
        data = query

    doc = api.evaluate(
        models,
        data,
        weights=weights,
        allow_class_mismatch=allow_class_mismatch,
        **(model_opts or {}),
        device=device,
        batch_size=batch_size,
        workers=workers,
        seed=seed,
        classes=classes,
        limit=limit,
        max_per_class=max_per_class,
        bad_images=bad_images,
        metrics=[m.strip() for m in metrics.split(",") if m.strip()],
        embed_site=embed_site,
        distance=distance,
        recall_k=_ints(recall_k, "--recall-k"),
        gallery=gallery,
        full_map=ranking == "full",
        whiten=whiten,
        whiten_dim=whiten_dim,
        save_whitening=save_whitening,
        plot=plot,
        corruptions=corruptions,
        severities=severities,
        perturbations=perturbations,
        shift=shift,
        shift_passes=shift_passes,
        baseline=baseline,
        corruption_table=None if corruption_table == "auto" else corruption_table,
    )
    from ..runtime import main_process

    if not main_process():  # under torchrun every rank holds the numbers; rank 0 reports
        return
    if not STATE["quiet"] and "classification" in doc["metrics"]:
        table = Table(title=f"evaluate on {data} ({doc['device']})", title_justify="left")
        for col in ("model", "weights", "images", "top-1", "top-5", "macro", "NLL", "ECE", "images/s"):
            table.add_column(col, justify="left" if col in ("model", "weights") else "right", no_wrap=col == "model")
        for r in doc["results"]:
            table.add_row(
                r["model"],
                r["weights"].split(":", 1)[0],
                str(r["n"]),
                f"{100 * r['top1']:.2f}%",
                f"{100 * r['top5']:.2f}%" if "top5" in r else "-",
                f"{100 * r['macro_accuracy']:.2f}%",
                f"{r['nll']:.4f}",
                f"{r['ece']:.4f}",
                f"{r['images_per_s']:.0f}",
            )
        console().print(table)
    if not STATE["quiet"] and "retrieval" in doc["metrics"]:
        _retrieval_table(doc, data)
    if not STATE["quiet"] and "separability" in doc["metrics"]:
        _separability_table(doc, data)
    if not STATE["quiet"] and "robustness" in doc["metrics"]:
        _robustness_tables(doc, data)
    if not STATE["quiet"] and doc["comparisons"]:
        _paired_table(doc)
    if not STATE["quiet"]:
        for r in doc["results"]:
            for note in r["notes"]:
                console().print(f"note: {note}")
    if json_out:
        emit_json(doc)


def _ints(text: str, option: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise BadInputError(f"bad {option} {text!r}: give positive integers, e.g. 1,2,4,8") from None
    if not values or min(values) < 1:
        raise BadInputError(f"bad {option} {text!r}: give positive integers, e.g. 1,2,4,8")
    return values


def _retrieval_table(doc: dict, data: str) -> None:
    first = doc["results"][0]["retrieval"]
    where = f"{first['protocol']}, {first['distance']}" + (f", gallery {doc['gallery']}" if doc["gallery"] else "")
    table = Table(title=f"retrieval on {data} ({where})", title_justify="left")
    ks = first["recall_k"]
    cols = ["model", "queries", "lone", "P@1", *(f"R@{k}" for k in ks if k > 1), "R-prec", "MAP@R", "MAP", "NMI", "AMI"]
    for col in cols:
        table.add_column(col, justify="left" if col == "model" else "right", no_wrap=col == "model")
    pct = lambda v: "-" if v is None or v != v else f"{100 * v:.2f}"  # noqa: E731
    for r in doc["results"]:
        m = r["retrieval"]
        table.add_row(
            r["model"],
            str(m["queries"]),
            str(m["lone_queries_excluded"]),
            pct(m["precision_at_1"]),
            *(pct(m[f"recall_at_{k}"]) for k in ks if k > 1),
            pct(m["r_precision"]),
            pct(m["map_at_r"]),
            pct(m.get("map")),
            pct(m.get("nmi")),
            pct(m.get("ami")),
        )
    console().print(table)
    console().print(f"embedding: {first['embedding']} (d={first['embedding_dim']}); values in %")


def _paired_table(doc: dict) -> None:
    table = Table(title="paired comparisons (a − b, same images; 95% bootstrap interval)", title_justify="left")
    for col in ("a", "b", "metric", "a − b", "95% interval", "McNemar p", "verdict"):
        table.add_column(col, justify="left" if col in ("a", "b", "metric", "verdict") else "right", no_wrap=True)
    for pair in doc["comparisons"]:
        for name, r in sorted((k, v) for k, v in pair.items() if isinstance(v, dict)):
            p = r.get("mcnemar", {}).get("p_value")
            table.add_row(
                pair["a"],
                pair["b"],
                name,
                f"{100 * r['difference']:+.2f}",
                f"[{100 * r['ci'][0]:+.2f}, {100 * r['ci'][1]:+.2f}]",
                "-" if p is None else f"{p:.3g}",
                "noise" if r["noise"] else "real",
            )
    console().print(table)
    console().print("differences in percentage points; 'noise': the 95% interval contains 0")


def _separability_table(doc: dict, data: str) -> None:
    table = Table(title=f"separability on {data}", title_justify="left")
    for col in ("model", "embedding", "S_b/S_w (eq. 8)", "tr(S_w⁻¹S_b)"):
        table.add_column(col, justify="left" if col in ("model", "embedding") else "right", no_wrap=col == "model")
    for r in doc["results"]:
        s = r["separability"]
        table.add_row(
            r["model"],
            s["embedding"],
            f"{s['eq8_ratio']:.4g}",
            f"{s['lda_trace']:.4g}" if s["lda_trace"] is not None else f"- ({s['lda_undefined']})",
        )
    console().print(table)


def _robustness_tables(doc: dict, data: str) -> None:
    """One column per model (corruptions and perturbations are the rows: there are more of them)."""
    pct = lambda v: "-" if v is None else f"{100 * v:.2f}"  # noqa: E731
    num = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    proto = doc["robustness_protocol"]
    results = doc["results"]
    names = [Path(r["model"]).name for r in results]
    if len(set(names)) < len(names):  # the same file name in two folders: number them
        names = [f"{i + 1}: {n}" for i, n in enumerate(names)]
    heads = [n + (" (baseline)" if r.get("role") == "baseline" else "") for n, r in zip(names, results)]
    blocks = [r["robustness"] for r in results]

    def table(title: str, rows: list[tuple[str, list[str]]]) -> None:
        t = Table(title=title, title_justify="left")
        t.add_column("", justify="left", no_wrap=True)
        for h in heads:
            t.add_column(h, justify="right")
        for name, cells in rows:
            t.add_row(name, *cells)
        console().print(t)

    if "corruptions" in blocks[0]:
        cs = [b["corruptions"] for b in blocks]
        rows = [("clean", [pct(c["clean_error"]) for c in cs])]
        rows += [(n, [pct(c["unnormalized_ce"][n]) for c in cs]) for n in cs[0]["unnormalized_ce"]]
        rows.append(("mean (unnormalised mCE)", [pct(c["unnormalized_mce"]) for c in cs]))
        if "mce" in cs[0]:
            rows.append((f"mCE, % of {Path(cs[0]['baseline']).name}'s", [pct(c["mce"]) for c in cs]))
            rows.append(("relative mCE, %", [pct(c["relative_mce"]) for c in cs]))
        sev = ",".join(str(s) for s in proto["severities"])
        table(f"corruption error on {data}, % ({proto['table']} table, mean over severities {sev})", rows)
    if "perturbations" in blocks[0]:
        ps = [b["perturbations"] for b in blocks]
        rows = [(n, [pct(p["flip_probability"][n]) for p in ps]) for n in ps[0]["flip_probability"]]
        rows.append(("mean flip probability", [pct(p["mean_flip_probability"]) for p in ps]))
        if "mfr" in ps[0]:
            rows.append(("mFR: flip rate, ratio to the baseline", [num(p["mfr"]) for p in ps]))
        rows.append(("mean top-5 distance (not normalised)", [num(p["mean_top5_distance"]) for p in ps]))
        table(f"flip probability on {data}, % (other units in the row names)", rows)
    if "shift" in blocks[0]:
        sh = proto["shift"]
        ss = [b["shift"] for b in blocks]
        zero = ss[0]["diagonal_shift"].index(0)
        rows = [
            ("consistency", [pct(s["consistency"]) for s in ss]),
            ("accuracy, centre window", [pct(s["diagonal_accuracy"][zero]) for s in ss]),
            ("worst diagonal shift accuracy", [pct(min(s["diagonal_accuracy"])) for s in ss]),
        ]
        title = (
            f"shift consistency on {data}, % ({sh['protocol']}-image protocol, shifts up to {sh['max_shift']} px, "
            f"{sh['passes']} passes)"
        )
        table(title, rows)
    if proto.get("left_out"):
        console().print("left out: " + "; ".join(f"{k} ({v})" for k, v in proto["left_out"].items()))
