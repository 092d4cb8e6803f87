"""Where a model's embedding comes from, and a hook that takes it during the ordinary forward pass.

Default: the pooled pre-logit features — the input of the final classifier Linear (timm's
``get_classifier()``, which is what ``forward_head(pre_logits=True)`` returns in eval mode; the last
``nn.Linear`` of a torchvision or poolcli model, e.g. ``fc``, ``classifier.1``, ``heads.head``). A model
whose classifier is not a Linear (SqueezeNet's conv head) falls back to the output of its global pool
(``@global``); without either the user names ``--embed-site``. ``--embed-site SITE``: that module's
output, averaged over its spatial grid when it is a map [B, C, H, W].

The hook does not stop the forward: the logits of the same pass feed the classification metrics, so one
pass over the data serves every metric family.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from ..errors import BadInputError
from .bundle import ModelBundle


@dataclasses.dataclass(frozen=True)
class EmbeddingTap:
    path: str  # module path
    which: str  # input | output
    description: str


def classifier_path(module: nn.Module) -> str | None:
    get = getattr(module, "get_classifier", None)
    if callable(get):  # timm
        head = get()
        if isinstance(head, nn.Linear):
            for name, sub in module.named_modules():
                if sub is head:
                    return name
    last = None
    for name, sub in module.named_modules():
        if isinstance(sub, nn.Linear):
            last = name
    return last


def find_embedding(bundle: ModelBundle, embed_site: str | None = None) -> EmbeddingTap:
    """The embedding tap of ``bundle``: ``embed_site``'s output, else the classifier's input, else @global."""
    module = bundle.module
    if embed_site is not None:
        from ..pipeline.collect import resolve_site

        site = resolve_site(bundle, embed_site)
        if "::" in site.path:
            raise BadInputError(
                f"--embed-site {embed_site} is a functional call ({site.path}); pick a module site from "
                "'poolcli inspect'"
            )
        return EmbeddingTap(site.path, "output", f"output of {site.path} (spatial mean if a map)")
    head = (bundle.extra or {}).get("embedding_head")
    if isinstance(head, dict) and isinstance(head.get("path"), str):
        try:
            module.get_submodule(head["path"])
        except AttributeError:
            raise BadInputError(f"{bundle.spec}'s manifest names an embedding head {head['path']!r} it lacks") from None
        return EmbeddingTap(head["path"], "output", f"embedding head: output of {head['path']}")
    path = classifier_path(module)
    if path is not None:
        lin = module.get_submodule(path)
        return EmbeddingTap(path, "input", f"pre-logits: input of {path} (Linear {lin.in_features}→{lin.out_features})")
    try:
        from ..pipeline.collect import resolve_site

        site = resolve_site(bundle, "@global")
    except BadInputError:
        site = None
    if site is None or "::" in site.path:
        raise BadInputError(
            f"{bundle.spec} has no identifiable embedding (no Linear classifier, no global pool module): name "
            "one with --embed-site (a site from 'poolcli inspect')"
        )
    return EmbeddingTap(site.path, "output", f"output of the global pool {site.path}")


@contextlib.contextmanager
def capture_embeddings(module: nn.Module, tap: EmbeddingTap, detach: bool = True) -> Iterator[dict[str, torch.Tensor]]:
    """During each forward, ``box["embedding"]`` receives the tap's [B, d] features (float32; with the graph
    when ``detach`` is False, for training on them)."""
    box: dict[str, torch.Tensor] = {}

    def hook(mod: nn.Module, args: tuple, out: Any) -> None:
        t = args[0] if tap.which == "input" else out
        if isinstance(t, (tuple, list)):
            t = t[0]
        if t.dim() == 4:
            t = t.mean((2, 3))
        box["embedding"] = (t.detach() if detach else t).flatten(1).float()

    handle = module.get_submodule(tap.path).register_forward_hook(hook)
    try:
        yield box
    finally:
        handle.remove()
