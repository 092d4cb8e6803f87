"""Streaming per-class statistics of spatial feature maps, and the scatter matrices A and B (seed 001 §3).

For maps X_k ∈ R^{N×C} (N = H·W locations, channels scaled by 1/σ_c), with K_q images of class q
(known from the labels before streaming, capped per class):
    X̄_q = (1/K_q) Σ_{k∈q} X_k,   X̄ = mean_q X̄_q,
    A = Σ_q (X̄_q − X̄)(X̄_q − X̄)ᵀ = D Dᵀ,   D = [X̄_1 − X̄ | … | X̄_Q − X̄]  (N × Q·C),
    B = Σ_q (1/K_q) Σ_{k∈q} X_k X_kᵀ − Σ_q X̄_q X̄_qᵀ = G − Σ_q X̄_q X̄_qᵀ.
Only sums are accumulated (float64): counts, per-class sums of the maps, and ONE Gram G with weights
1/K_q (no per-class N×N matrices). Sums merge by addition, so shards and ranks combine exactly; memory
does not depend on the number of images.

The maps are centred by the mean map of the moments pass (per channel and location, ``centre`` [C, N])
before they are summed: A and B do not change (each is a difference of second moments about the class
means), but the Gram's entries become second moments about a common centre instead of raw ones, so its
rounding errors are not amplified by the cancellation in B = G − Σ X̄_q X̄_qᵀ (measured at the fixture's
@down1: the float32 product's error on G is 6× smaller about the mean map than about the channel means,
and 1e-2 relative on B without centring). Precision ``mixed`` (default): each batch's centred maps are
rounded to float32 once, and the batch's Gram is one float32 product (only the upper triangle, in strips:
the SYRK half of the flops) added into the float64 Gram; every sum across images is float64. The error is
the float32 rounding of one batch's product (measured: relative ≤ 2e-7 on A and B at the fixture's
@down1; docs/BENCHMARKS.md). Precision ``float64`` does the same products in float64.
"""

from __future__ import annotations

import dataclasses

import torch

PRECISIONS = ("mixed", "float64")
STRIP = 128  # rows per strip of the upper-triangular Gram update


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

    precision: str = "mixed"  # mixed | float64: the dtype of each batch's products (sums are float64)
    centre: torch.Tensor | None = None  # [C, N] subtracted from every map (None: channel_mean everywhere)

    @classmethod
    def empty(
        cls,
        planned_counts: torch.Tensor,
        grid: tuple[int, int],
        channel_mean: torch.Tensor,
        channel_scale: torch.Tensor,
        precision: str = "mixed",
        centre: torch.Tensor | None = None,
    ) -> ScatterStats:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
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
            precision=precision,
            centre=None if centre is None else centre.double().reshape(c, n),
        )

    @property
    def num_locations(self) -> int:
        return self.gram.shape[0]

    def update(self, maps: torch.Tensor, labels: torch.Tensor) -> bool:
        """Add a batch of maps [b, C, H, W] (any float dtype/device) with labels [b]; returns whether the
        batch's class sums are finite (a NaN or inf anywhere in the maps makes them not finite).

        Only the Gram's upper triangle (by strips of :data:`STRIP` rows) is updated here; :meth:`complete`
        mirrors it before the Gram is read (:meth:`tensors`, :meth:`merge`, :meth:`scatter`)."""
        b, c, h, w = maps.shape
        if (h, w) != self.grid or c != self.channel_scale.numel():
            raise ValueError(
                f"maps of shape {c}×{h}×{w} do not match statistics for "
                f"{self.channel_scale.numel()}×{self.grid[0]}×{self.grid[1]}"
            )
        dev = self.gram.device
        dtype = torch.float32 if self.precision == "mixed" else torch.float64
        labels, on_cpu = labels.to(dev), labels.cpu()
        root = self.weights.to(dev)[labels].sqrt()  # [b] √w_k: the Gram's weights go into both factors
        inv = (1.0 / self.channel_scale).to(dev)[None, :, None] * root[:, None, None]  # [b, C, 1]
        centre = self.channel_mean[:, None] if self.centre is None else self.centre
        # z = √w_k (x − centre)/σ_c, rounded to ``dtype``: [b, C, N], the locations contiguous
        z = torch.sub(maps.detach().to(dev).reshape(b, c, h * w), centre.to(dev, dtype)[None], alpha=1)
        z = z.to(dtype).mul_(inv.to(dtype))
        self.counts.index_add_(0, on_cpu, torch.ones_like(on_cpu))
        q = self.counts.numel()
        unweight = torch.nn.functional.one_hot(labels, q).to(torch.float64) / root[:, None]  # [b, Q]
        # per-class sums of the batch as one GEMM in ``dtype`` (each sums the few images of one class in the
        # batch: the zeros of the one-hot add exactly), then added into the float64 sums
        sums = (unweight.to(dtype).t() @ z.reshape(b, c * h * w)).to(torch.float64)
        self.class_sums.add_(sums.view(q, c, h * w).transpose(1, 2))
        flat = z.reshape(b * c, h * w)  # Gram = flatᵀ flat: BLAS reads the transposed operand in place
        n = h * w
        for i in range(0, n, STRIP):  # the upper triangle strip by strip: about half the flops of the full product
            self.gram[i : i + STRIP, i:] += flat[:, i : i + STRIP].t() @ flat[:, i:]
        return bool(torch.isfinite(sums).all())

    def complete(self) -> ScatterStats:
        """Mirror the upper triangle that :meth:`update` accumulates into the lower one (in place)."""
        n = self.num_locations
        for i in range(STRIP, n, STRIP):
            self.gram[i : i + STRIP, :i].copy_(self.gram[:i, i : i + STRIP].t())
        return self

    def merge(self, other: ScatterStats) -> ScatterStats:
        self.complete()
        other.complete()
        if (self.centre is None) != (other.centre is None):
            raise ValueError("statistics disagree on their centre: they come from different runs or versions")
        for name in ("weights", "channel_mean", "channel_scale") + (("centre",) if self.centre is not None else ()):
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
        self.complete()
        skip = ("grid", "precision") + (("centre",) if self.centre is None else ())
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in skip}

    @classmethod
    def from_tensors(cls, t: dict[str, torch.Tensor], grid: tuple[int, int], precision: str = "mixed") -> ScatterStats:
        return cls(
            **{k: t[k] for k in ("weights", "counts", "class_sums", "gram", "channel_mean", "channel_scale")},
            grid=tuple(grid),
            precision=precision,
            centre=t.get("centre"),
        )

    def present_classes(self) -> torch.Tensor:
        return (self.counts > 0).nonzero().squeeze(1)

    def scatter(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(D, B) with A = D Dᵀ. Requires every present class to be complete (counts == planned)."""
        self.complete()
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
