"""Fingerprints of a job's inputs: which model (weights and architecture) and which images, in which order.

They key resumable partial files and the shards of one collect run: a partial or shard is only ever combined
with a run whose fingerprints are equal, so statistics of two models or two datasets can never mix.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import torch

from ..data.specs import ImageDataset
from ..models.bundle import ModelBundle


def tensor_digest(h: Any, t: torch.Tensor) -> None:
    t = t.detach().to("cpu").contiguous()
    h.update(f"{t.dtype}{list(t.shape)}".encode())
    if t.numel():
        h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))


def model_fingerprint(bundle: ModelBundle) -> str:
    """sha256 of the architecture (base, swaps) and of every tensor of the state_dict, in name order."""
    h = hashlib.sha256(json.dumps({"base": bundle.base, "swaps": bundle.swaps}, sort_keys=True).encode())
    state = bundle.module.state_dict()
    for name in sorted(state):
        h.update(name.encode())
        tensor_digest(h, state[name])
    return h.hexdigest()[:32]


def dataset_fingerprint(ds: ImageDataset) -> str:
    """sha256 of the source's identity (its description and, for files, size and modification time), the
    selected indices in order, their labels and the preprocessing."""
    h = hashlib.sha256(f"{ds.raw.description}|{ds.raw.identity}".encode())
    for path in getattr(ds.raw, "files", ()) or ():
        try:
            st = os.stat(path)
            h.update(f"{path}:{st.st_size}:{st.st_mtime_ns}".encode())
        except OSError:
            h.update(f"{path}:missing".encode())
    tensor_digest(h, ds.indices.long())
    tensor_digest(h, ds.labels.long())
    h.update(repr(ds.preprocess.signature()).encode())
    return h.hexdigest()[:32]


def descent(bundle: ModelBundle) -> list[dict[str, Any]]:
    """The lineage of a model made from ``bundle`` (converted or fine-tuned): the parent's own lineage plus
    one entry with the parent's content digest and its facts (accuracy, runs, origin). The parent is named
    by content, not path: the same run from another folder gives the same bytes."""
    facts = {k: v for k, v in bundle.extra.items() if k != "lineage"}
    return [*bundle.extra.get("lineage", []), {"parent_sha256": model_fingerprint(bundle), **facts}]
