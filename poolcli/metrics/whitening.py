"""Descriptor post-processing for retrieval: L2 → PCA-whitening → L2 (Jégou & Chum, ECCV 2012; SPoC,
Babenko & Lempitsky, ICCV 2015), fitted on a separate set of embeddings, saved and reused.

Fit on embeddings X [n, d]: x̂ = x/‖x‖; μ = mean x̂; Σ = cov(x̂) = U Λ Uᵀ (float64, ``eigh``); keep the
top ``dim`` components; P = diag(λ + ε)^{-1/2} U_dimᵀ with ε = 1e-12·λ_max (directions of zero variance
are not blown up to infinity). Apply: y = normalise(P (normalise(x) − μ)).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from ..errors import BadInputError

FORMAT = "poolcli.whitening"


@dataclasses.dataclass
class Whitening:
    mean: torch.Tensor  # [d]
    projection: torch.Tensor  # [dim, d]
    eigenvalues: torch.Tensor  # [dim], descending

    @property
    def dim(self) -> int:
        return self.projection.shape[0]

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.mean.numel():
            raise BadInputError(
                f"the whitening was fitted on {self.mean.numel()}-d embeddings, these are {x.shape[1]}-d: fit it "
                "on the same model's embeddings"
            )
        z = torch.nn.functional.normalize(x.double(), dim=1) - self.mean
        return torch.nn.functional.normalize(z @ self.projection.t(), dim=1).float()


def fit_whitening(x: torch.Tensor, dim: int | None = None) -> Whitening:
    n, d = x.shape
    dim = d if dim is None else int(dim)
    if not 1 <= dim <= d:
        raise BadInputError(f"--dim {dim} must be between 1 and the embedding's {d} dimensions")
    if n < 2:
        raise BadInputError("whitening needs at least 2 embeddings to fit on")
    xn = torch.nn.functional.normalize(x.double(), dim=1)
    mean = xn.mean(0)
    c = xn - mean
    cov = c.t() @ c / (n - 1)
    lam, U = torch.linalg.eigh(cov)
    lam, U = lam.flip(0)[:dim].clamp(min=0), U.flip(1)[:, :dim]
    eps = 1e-12 * float(lam[0]) if float(lam[0]) > 0 else 1e-12
    return Whitening(mean, (U / (lam + eps).sqrt()).t().contiguous(), lam)


def save_whitening(path: Path | str, w: Whitening, meta: dict) -> None:
    from ..io.tensorfile import write_tensors

    tensors = {"mean": w.mean, "projection": w.projection, "eigenvalues": w.eigenvalues}
    write_tensors(path, tensors, {"format": FORMAT, **meta}, what="the whitening")


def load_whitening(path: Path | str) -> Whitening:
    from ..io.tensorfile import read_tensors

    tensors, meta = read_tensors(path)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise BadInputError(f"{path} is not a poolcli whitening file; make one with --whiten DATA --save-whitening")
    try:
        w = Whitening(tensors["mean"].double(), tensors["projection"].double(), tensors["eigenvalues"].double())
    except KeyError as e:
        raise BadInputError(f"{path}: tensor {e.args[0]} is missing; re-create the whitening") from None
    ok = (
        w.mean.dim() == 1
        and w.projection.dim() == 2
        and w.projection.shape[1] == w.mean.numel()
        and w.eigenvalues.shape == (w.projection.shape[0],)
        and all(bool(torch.isfinite(t).all()) for t in (w.mean, w.projection, w.eigenvalues))
    )
    if not ok:
        raise BadInputError(f"{path}: the whitening's tensors are inconsistent or not finite; re-create it")
    return w
