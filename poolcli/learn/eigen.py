"""Top-k generalized eigenvectors of A p = λ (B + α C_m) p for every output location m.

C_m = diag(‖coord(n) − centre(m)‖²) in input-pixel units, centre(m) the centre of output cell m's
window on the input grid (the paper's s·coord(m) with the window centre as anchor). Two solvers:

* ``exact``: scipy ``eigh(A, G_m, subset_by_index)`` per m (LAPACK, float64): the reference.
* ``lobpcg``: one block LOBPCG over all m at once, Cholesky-free. Since G_m X = B X + α c_m ⊙ X, the only
  O(N²) work per iteration is one GEMM B·[X_1 … X_M] for all m together; A X = D (Dᵀ X) uses A's
  low rank when D is thin. Jacobi preconditioner 1/diag(G_m), SVQB orthonormalisation (tiny directions
  zeroed so batch shapes stay fixed), batched Rayleigh–Ritz, block size k + 1 (one guard vector).

Never forms an inverse. Eigenvectors are returned G_m-normalised; callers renormalise and fix signs.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import torch

from ..progress import task


def output_grid(in_hw: tuple[int, int], stride: int) -> tuple[int, int]:
    return (max(1, in_hw[0] // stride), max(1, in_hw[1] // stride))


def locality_penalty(in_hw: tuple[int, int], out_hw: tuple[int, int], dtype=torch.float64) -> torch.Tensor:
    """c [M, N]: squared pixel distance from input location n to output cell m's window centre."""
    h, w = in_hw
    ho, wo = out_hw
    sy, sx = h / ho, w / wo
    yy, xx = torch.meshgrid(torch.arange(h, dtype=dtype), torch.arange(w, dtype=dtype), indexing="ij")
    cy = (torch.arange(ho, dtype=dtype) + 0.5) * sy - 0.5
    cx = (torch.arange(wo, dtype=dtype) + 0.5) * sx - 0.5
    cyy, cxx = torch.meshgrid(cy, cx, indexing="ij")
    return (yy.reshape(1, -1) - cyy.reshape(-1, 1)) ** 2 + (xx.reshape(1, -1) - cxx.reshape(-1, 1)) ** 2


@dataclasses.dataclass
class EigResult:
    vectors: torch.Tensor  # [M, N, k], G_m-orthonormal, λ descending
    values: torch.Tensor  # [M, k] (+1 guard value in ``guard`` for the gap)
    guard: torch.Tensor  # [M] the (k+1)-th eigenvalue estimate (NaN when not computed)
    iterations: int
    residual: float  # max relative residual ‖A x − λ G x‖ / (‖A x‖ + |λ| ‖G x‖)


def solve_exact(A: torch.Tensor, B: torch.Tensor, penalty: torch.Tensor, alpha: float, k: int) -> EigResult:
    import scipy.linalg

    a, b = A.double().numpy(), B.double().numpy()
    n = a.shape[0]
    kk = min(k + 1, n)
    vecs, vals, guard = [], [], []
    with task("fit: eigen-solve per location", penalty.shape[0], unit="locations") as advance:
        for c in penalty.double().numpy():
            g = b.copy()
            g[range(n), range(n)] += alpha * c
            w, v = scipy.linalg.eigh(a, g, subset_by_index=[n - kk, n - 1], driver="gvx")
            w, v = w[::-1], v[:, ::-1]
            vals.append(torch.from_numpy(w[:k].copy()))
            vecs.append(torch.from_numpy(v[:, :k].copy()))
            guard.append(float(w[k]) if kk > k else math.nan)
            advance(1)
    return EigResult(torch.stack(vecs), torch.stack(vals), torch.tensor(guard, dtype=torch.float64), 0, 0.0)


def locality_penalty_rows(
    in_hw: tuple[int, int], out_hw: tuple[int, int], rows: range, dtype=torch.float64
) -> torch.Tensor:
    """Rows ``rows`` of :func:`locality_penalty` without forming the others ([len(rows), N])."""
    h, w = in_hw
    ho, wo = out_hw
    sy, sx = h / ho, w / wo
    idx = torch.arange(rows.start, rows.stop)
    cy = ((idx // wo).to(dtype) + 0.5) * sy - 0.5
    cx = ((idx % wo).to(dtype) + 0.5) * sx - 0.5
    yy, xx = torch.meshgrid(torch.arange(h, dtype=dtype), torch.arange(w, dtype=dtype), indexing="ij")
    return (yy.reshape(1, -1) - cy[:, None]) ** 2 + (xx.reshape(1, -1) - cx[:, None]) ** 2


def solve_lobpcg_chunked(
    A_factor: torch.Tensor,
    B: torch.Tensor,
    in_hw: tuple[int, int],
    out_hw: tuple[int, int],
    alpha: float,
    k: int,
    *,
    chunk: int,
    tol: float = 1e-9,
    max_iter: int = 500,
    seed: int = 0,
) -> EigResult:
    """:func:`solve_lobpcg` over the output cells in chunks of ``chunk`` (memory ∝ chunk, not M); the
    penalty rows of each chunk are made when it is solved. Same results as one block."""
    m = out_hw[0] * out_hw[1]
    chunk = max(1, min(int(chunk), m))
    parts: list[EigResult] = []
    with task(f"fit: LOBPCG in chunks of {chunk} locations", m, unit="locations") as advance:
        for start in range(0, m, chunk):
            rows = range(start, min(m, start + chunk))
            penalty = locality_penalty_rows(in_hw, out_hw, rows, B.dtype).to(B.device)
            parts.append(
                solve_lobpcg(A_factor, B, penalty, alpha, k, tol=tol, max_iter=max_iter, seed=seed, first=start)
            )
            advance(len(rows))
    return EigResult(
        vectors=torch.cat([p.vectors for p in parts]),
        values=torch.cat([p.values for p in parts]),
        guard=torch.cat([p.guard for p in parts]),
        iterations=max(p.iterations for p in parts),
        residual=max(p.residual for p in parts),
    )


def _apply_A(A_factor: torch.Tensor, X: torch.Tensor, dense: bool) -> torch.Tensor:
    """A·X for X [M, N, b]; A given dense [N, N] or as its factor D [N, r] (A = D Dᵀ)."""
    m, n, b = X.shape
    flat = X.permute(1, 0, 2).reshape(n, m * b)
    out = A_factor @ flat if dense else A_factor @ (A_factor.t() @ flat)
    return out.reshape(n, m, b).permute(1, 0, 2)


def _apply_G(B: torch.Tensor, penalty: torch.Tensor, alpha: float, X: torch.Tensor) -> torch.Tensor:
    m, n, b = X.shape
    bx = (B @ X.permute(1, 0, 2).reshape(n, m * b)).reshape(n, m, b).permute(1, 0, 2)
    return bx + alpha * penalty[:, :, None] * X


def _svqb(S: torch.Tensor, GS: torch.Tensor, drop: float) -> tuple[torch.Tensor, torch.Tensor]:
    """G-orthonormalise the columns of S [M, N, s] (GS = G S); tiny directions become zero columns."""
    gram = S.transpose(1, 2) @ GS
    gram = 0.5 * (gram + gram.transpose(1, 2))
    d = torch.diagonal(gram, dim1=1, dim2=2).clamp(min=1e-300).rsqrt()
    scaled = gram * d[:, :, None] * d[:, None, :]
    theta, U = torch.linalg.eigh(scaled)
    keep = theta > drop * theta.amax(dim=1, keepdim=True)
    inv = torch.where(keep, theta.clamp(min=1e-300).rsqrt(), torch.zeros_like(theta))
    T = d[:, :, None] * U * inv[:, None, :]  # [M, s, s]
    return S @ T, GS @ T


def _renormalise(X: torch.Tensor, GX: torch.Tensor, AX: torch.Tensor):
    """Rescale each column to unit G-norm (guards against drift of the carried products)."""
    scale = (X * GX).sum(1, keepdim=True).clamp(min=1e-300).rsqrt()
    return X * scale, GX * scale, AX * scale


def solve_lobpcg(
    A_factor: torch.Tensor,
    B: torch.Tensor,
    penalty: torch.Tensor,
    alpha: float,
    k: int,
    *,
    tol: float = 1e-9,
    max_iter: int = 500,
    dense_A: bool | None = None,
    X0: torch.Tensor | None = None,
    seed: int = 0,
    first: int = 0,
    precond: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> EigResult:
    """Block LOBPCG for the top-k (+1 guard) generalized eigenpairs of all M problems at once.

    Every problem's start, preconditioner and stopping depend on that problem only (``first``: the index of
    ``penalty``'s first row among all output cells, which seeds its start), so solving the cells in chunks
    gives the results of one block. ``precond(R, cells)``: a preconditioner for the residuals R of the
    cells still iterating (default: Jacobi, 1/diag(G_m))."""
    n = B.shape[0]
    m = penalty.shape[0]
    nb = min(k + 1, n)
    dense = (A_factor.shape[1] >= n) if dense_A is None else dense_A
    if dense and A_factor.shape[1] != n:
        A_factor = A_factor @ A_factor.t()
    dtype = B.dtype
    diagG = torch.diagonal(B)[None, :] + alpha * penalty  # [M, N]
    jacobi = 1.0 / diagG.clamp(min=1e-12 * diagG.abs().amax(dim=1, keepdim=True))
    if X0 is None:  # localised starts: a bump around each output cell plus random perturbations
        scale = penalty.amin(dim=1, keepdim=True) + penalty.mean(dim=1, keepdim=True) / 8 + 1e-12
        bump = torch.exp(-penalty / scale)
        noise = torch.stack(
            [
                torch.randn(n, nb, generator=torch.Generator().manual_seed(seed * 1_000_003 + first + i), dtype=dtype)
                for i in range(m)
            ]
        ).to(B.device)  # drawn on the CPU: the same starts on every device
        X0 = bump[:, :, None] * (1 + 0.5 * noise)
        X0[:, :, 0] = bump
    X = X0.to(dtype)
    GX = _apply_G(B, penalty, alpha, X)
    X, GX = _svqb(X, GX, 1e-14)
    AX = _apply_A(A_factor, X, dense)
    # converged cells leave the batch (their X and A·X are kept in the outputs): the GEMMs of later
    # iterations run over the cells still iterating only
    X_out, AX_out = torch.empty_like(X), torch.empty_like(AX)
    active = torch.arange(m, device=B.device)
    pen_a, jac_a = penalty, jacobi
    P = None
    it = 0
    rel = 0.0
    with task("fit: LOBPCG iterations (this chunk)", max_iter, unit="iterations") as advance:
        for it in range(1, max_iter + 1):  # noqa: B007 (it is reported after the loop)
            X, GX, AX = _renormalise(X, GX, AX)
            lam = (X * AX).sum(1)
            R = AX - GX * lam[:, None, :]
            norms = R.norm(dim=1) / (AX.norm(dim=1) + lam.abs() * GX.norm(dim=1) + 1e-300)  # [active, nb]
            worst = norms[:, :k].amax(dim=1)
            done = worst < tol
            rel = max(rel, float(worst[done].max())) if bool(done.any()) else rel
            if bool(done.any()):  # lock: out of the batch for good
                X_out[active[done]], AX_out[active[done]] = X[done], AX[done]
                keep = ~done
                active, X, GX, AX, R, pen_a, jac_a = (t[keep] for t in (active, X, GX, AX, R, pen_a, jac_a))
                P = None if P is None else P[keep]
            if active.numel() == 0:
                break
            if it == max_iter:  # unconverged cells keep their last iterate; the residual says how far they are
                rel = max(rel, float(worst[~done].max()))
                break
            W = jac_a[:, :, None] * R if precond is None else precond(R, active)
            new = W if P is None else torch.cat([W, P], dim=2)
            S = torch.cat([X, new], dim=2)
            # G·[W, P] fresh in one GEMM: P comes from a cancellation, so a carried G·P drifts from G times P
            GS = torch.cat([GX, _apply_G(B, pen_a, alpha, new)], dim=2)
            S, GS = _svqb(*_svqb(S, GS, 1e-8), 1e-8)  # twice: one pass loses orthogonality near convergence
            AS = _apply_A(A_factor, S, dense)
            red = S.transpose(1, 2) @ AS
            red = 0.5 * (red + red.transpose(1, 2))
            theta, Y = torch.linalg.eigh(red)
            Y = Y.flip(-1)[:, :, :nb]  # top nb Ritz vectors (zeroed directions have θ = 0 ≤ top ones)
            Xn, GXn, AXn = S @ Y, GS @ Y, AS @ Y
            coef = X.transpose(1, 2) @ GXn  # implicit P: the new block minus its component along the old X
            P = Xn - X @ coef
            X, GX, AX = Xn, GXn, AXn
            advance(1)
    if active.numel():
        X_out[active], AX_out[active] = X, AX
    X, AX = X_out, AX_out
    xax = X.transpose(1, 2) @ AX
    theta, Y = torch.linalg.eigh(0.5 * (xax + xax.transpose(1, 2)))
    Y = Y.flip(-1)
    X, vals = X @ Y, theta.flip(-1)
    guard = vals[:, k] if nb > k else torch.full((m,), math.nan, dtype=dtype, device=B.device)
    return EigResult(X[:, :, :k], vals[:, :k], guard, it, rel)
