"""Class separability of embeddings (seed 001's criterion), streamed through the statistics code of collect.

For embeddings z_k ∈ R^d with labels y_k (K_q images of class q, Q classes, z̄_q the class means and z̄ the
mean of the class means):
* ``eq8_ratio`` = S_b / S_w with S_b = (1/Q) Σ_q ‖z̄_q − z̄‖², S_w = (1/Q) Σ_q (1/K_q) Σ_{k∈q} ‖z_k − z̄_q‖²
  (Eq. 8 of "Learning Spatially-Varying Linear Pooling ...", the ratio the learned pooling maximises; the
  paper's z̄ is the mean over images, equal to ours when classes are balanced);
* ``lda_trace`` = tr(S_w⁻¹ S_b) with the d×d scatter matrices S_w = (1/Q) Σ_q (1/K_q) Σ (z_k − z̄_q)(…)ᵀ and
  S_b = (1/Q) Σ_q (z̄_q − z̄)(…)ᵀ (Fisher's criterion, as in LDA); undefined (null, with the reason) when
  S_w is numerically singular — fewer images than dimensions, or condition number ≥ 1e9 (the fit's test):
  a ridge would make the number whatever the ridge makes it (1e7 for the fixture's 512-d pre-logits
  from 180 images).

Both are read off :class:`poolcli.learn.stats.ScatterStats` — the streamed per-class sums and one weighted
Gram that ``collect`` accumulates — with the embedding seen as a 1×1 map of d channels (its Gram is then
Σ w_k ‖z_k‖², which gives the traces of eq. 8) and as a 1×d map of one channel (its Gram is the d×d
second-moment matrix, which gives S_w): no second implementation of the scatter.
"""

from __future__ import annotations

import torch

from ..errors import BadInputError
from ..learn.pooling import needs_ridge
from ..learn.stats import ScatterStats


class Separability:
    """Streams embeddings [b, d] with labels into the two scatter views; ``planned`` = images per class."""

    def __init__(self, planned: torch.Tensor) -> None:
        self.planned = planned.long().cpu()
        self.traces: ScatterStats | None = None
        self.matrix: ScatterStats | None = None

    def update(self, embedding: torch.Tensor, labels: torch.Tensor) -> None:
        z = embedding.detach().double().cpu()
        b, d = z.shape
        if self.traces is None:
            zeros, ones = torch.zeros(d, dtype=torch.float64), torch.ones(d, dtype=torch.float64)
            self.traces = ScatterStats.empty(self.planned, (1, 1), zeros, ones, "float64")
            self.matrix = ScatterStats.empty(self.planned, (1, d), zeros[:1], ones[:1], "float64")
        self.traces.update(z[:, :, None, None], labels.cpu())
        self.matrix.update(z[:, None, None, :], labels.cpu())

    @torch.inference_mode()  # the sums were made during the inference-mode forward pass
    def result(self) -> dict[str, float]:
        present = self.traces.present_classes()
        if present.numel() < 2:
            raise BadInputError("separability needs at least 2 classes in the data; widen --classes")
        if bool((self.traces.counts[present] < 2).any()):
            raise BadInputError("separability needs at least 2 images per class; raise --max-per-class or --limit")
        q = float(present.numel())
        D, B = self.traces.scatter()  # D [1, Q·d], B [1, 1]: Q·S_b = ‖D‖², Q·S_w = B
        s_b, s_w = float((D**2).sum()) / q, float(B[0, 0]) / q
        Dm, Bm = self.matrix.scatter()  # Dm [d, Q], Bm [d, d]: Q·S_b = Dm Dmᵀ, Q·S_w = Bm
        counts = self.matrix.counts[present]
        rank = int((counts - 1).sum())  # rank S_w ≤ Σ (K_q − 1)
        lda, why = None, None
        if needs_ridge(Bm, rank) > 0:
            why = (
                f"S_w is singular: {rank + int(present.numel())} images for {Bm.shape[0]} dimensions"
                if rank < Bm.shape[0]
                else "S_w is numerically singular (condition number ≥ 1e9)"
            )
        else:
            L = torch.linalg.cholesky(Bm)
            lda = float((torch.linalg.solve_triangular(L, Dm, upper=False) ** 2).sum())  # tr(B⁻¹ D Dᵀ), Q cancels
        return {
            "eq8_ratio": s_b / s_w if s_w > 0 else float("inf"),
            "between_scatter": s_b,
            "within_scatter": s_w,
            "lda_trace": lda,
            "lda_undefined": why,
            "dim": int(Bm.shape[0]),
            "classes": int(q),
        }
