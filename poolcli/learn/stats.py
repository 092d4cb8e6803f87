"""Streaming per-class statistics of spatial feature maps, and the scatter matrices A and B (seed 001 §3).

For maps X_k ∈ R^{N×C} (N = H·W locations, channels scaled by 1/σ_c), with K_q images of class q
(known from the labels before streaming, capped per class):
    X̄_q = (1/K_q) Σ_{k∈q} X_k,   X̄ = mean_q X̄_q,
    A = Σ_q (X̄_q − X̄)(X̄_q − X̄)ᵀ = D Dᵀ,   D = [X̄_1 − X̄ | … | X̄_Q − X̄]  (N × Q·C),
    B = Σ_q (1/K_q) Σ_{k∈q} X_k X_kᵀ − Σ_q X̄_q X̄_qᵀ = G − Σ_q X̄_q X̄_qᵀ.
Only sums are accumulated (float64): counts, per-class sums of the maps, and ONE Gram G with weights
1/K_q (a single batched GEMM per batch, no per-class N×N matrices). Sums merge by addition, so shards
and ranks combine exactly; memory does not depend on the number of images.
"""

from __future__ import annotations

import dataclasses

import torch


def symmetrise_(M: torch.Tensor, block: int = 1024) -> torch.Tensor:
    """M ← (M + Mᵀ)/2 in place, block by block (no second N×N array)."""
    n = M.shape[0]
    for i in range(0, n, block):
        for j in range(i, n, block):
            upper = M[i : i + block, j : j + block]
            avg = 0.5 * (upper + M[j : j + block, i : i + block].t())
            upper.copy_(avg)
            M[j : j + block, i : i + block].copy_(avg.t())
    return M


@dataclasses.dataclass
class ScatterStats:
    weights: torch.Tensor  # [Q] float64, 1/K_q for the planned (capped) class counts
    counts: torch.Tensor  # [Q] int64, images accumulated so far
    class_sums: torch.Tensor  # [Q, N, C] float64
    gram: torch.Tensor  # [N, N] float64, Σ_k w_{y_k} X_k X_kᵀ
    channel_mean: torch.Tensor  # [C] (for the pooling module's normalisation; cancels in A and B)
    channel_scale: torch.Tensor  # [C] σ_c
    grid: tuple[int, int]  # (H, W)

    @classmethod
    def empty(
        cls,
        planned_counts: torch.Tensor,
        grid: tuple[int, int],
        channel_mean: torch.Tensor,
        channel_scale: torch.Tensor,
    ) -> ScatterStats:
        q, n, c = planned_counts.numel(), grid[0] * grid[1], channel_scale.numel()
        w = torch.where(
            planned_counts > 0, 1.0 / planned_counts.clamp(min=1).double(), torch.zeros(q, dtype=torch.float64)
        )
        return cls(
            weights=w,
            counts=torch.zeros(q, dtype=torch.long),
            class_sums=torch.zeros(q, n, c, dtype=torch.float64),
            gram=torch.zeros(n, n, dtype=torch.float64),
            channel_mean=channel_mean.double(),
            channel_scale=channel_scale.double(),
            grid=tuple(grid),
        )

    @property
    def num_locations(self) -> int:
        return self.gram.shape[0]

    def update(self, maps: torch.Tensor, labels: torch.Tensor) -> None:
        """Add a batch of maps [b, C, H, W] (any float dtype/device) with labels [b]."""
        b, c, h, w = maps.shape
        if (h, w) != self.grid or c != self.channel_scale.numel():
            raise ValueError(
                f"maps of shape {c}×{h}×{w} do not match statistics for "
                f"{self.channel_scale.numel()}×{self.grid[0]}×{self.grid[1]}"
            )
        dev = self.gram.device
        x = maps.detach().to(dev, torch.float64).reshape(b, c, h * w)
        x = x.div_(self.channel_scale.to(dev)[None, :, None]).transpose(1, 2)  # [b, N, C], channel-scaled
        labels = labels.to(dev)
        self.counts.index_add_(0, labels.cpu(), torch.ones_like(labels.cpu()))
        onehot = torch.nn.functional.one_hot(labels, self.counts.numel()).to(torch.float64)  # [b, Q]
        self.class_sums.view(self.counts.numel(), -1).addmm_(onehot.t(), x.reshape(b, -1))  # per-class sums as one GEMM
        wx = x * self.weights.to(dev)[labels].sqrt()[:, None, None]
        z = wx.transpose(0, 1).reshape(h * w, b * c)  # [N, b·C]
        self.gram.addmm_(z, z.t())  # Σ_k w_k X_k X_kᵀ as one GEMM for the whole batch

    def merge(self, other: ScatterStats) -> ScatterStats:
        for name in ("weights", "channel_scale"):
            if not torch.allclose(getattr(self, name), getattr(other, name), rtol=1e-12, atol=0):
                raise ValueError(
                    f"statistics disagree on {name.replace('_', ' ')}: they come from different runs or datasets"
                )
        if self.grid != other.grid:
            raise ValueError(f"statistics have different grids {self.grid} and {other.grid}")
        return dataclasses.replace(
            self,
            counts=self.counts + other.counts,
            class_sums=self.class_sums + other.class_sums,
            gram=self.gram + other.gram,
        )

    def tensors(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "grid"}

    @classmethod
    def from_tensors(cls, t: dict[str, torch.Tensor], grid: tuple[int, int]) -> ScatterStats:
        return cls(
            **{k: t[k] for k in ("weights", "counts", "class_sums", "gram", "channel_mean", "channel_scale")},
            grid=tuple(grid),
        )

    def present_classes(self) -> torch.Tensor:
        return (self.counts > 0).nonzero().squeeze(1)

    def scatter(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(D, B) with A = D Dᵀ. Requires every present class to be complete (counts == planned)."""
        q = self.present_classes()
        planned = torch.where(
            self.weights > 0, (1.0 / self.weights.clamp(min=1e-300)).round().long(), torch.zeros_like(self.counts)
        )
        if not torch.equal(self.counts[q], planned[q]):
            raise ValueError(
                "statistics are incomplete (some classes have fewer images than planned); merge all shards first"
            )
        means = self.class_sums[q] / self.counts[q].double()[:, None, None]  # [Q', N, C]
        centre = means.mean(0)
        D = (means - centre).permute(1, 0, 2).reshape(self.num_locations, -1)  # [N, Q'·C]
        flat = means.permute(1, 0, 2).reshape(self.num_locations, -1)
        B = self.gram.clone().addmm_(flat, flat.t(), alpha=-1)  # one N×N array beside the Gram, no temporaries
        return D, symmetrise_(B)
