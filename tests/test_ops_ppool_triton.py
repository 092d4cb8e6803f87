"""The Triton P-pooling kernels (the CUDA path), run through Triton's CPU interpreter: equal to the torch tap
loop in values and both gradients, on every geometry class, α broadcast, negative mode and dtype, and
gradcheck'd in float64. On a machine with CUDA the same checks also run on the GPU."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from .conftest import ROOT

triton = pytest.importorskip("triton")

CHECK = textwrap.dedent(
    """
    import itertools, sys, torch
    from poolcli.ops import ppool_triton
    from poolcli.ops.ppool import p_pool2d

    device, full = sys.argv[1], sys.argv[2] == "full"
    x0 = torch.zeros(1, 1, 2, 2, device=device)
    assert ppool_triton.available(x0), "triton path unavailable"

    def run(x, alpha, geom, negative, impl, gy):
        x = x.detach().clone().requires_grad_()
        a = alpha.detach().clone().requires_grad_()
        y = p_pool2d(x, a, *geom, negative=negative, impl=impl)
        y.backward(gy)
        return y.detach(), x.grad, a.grad

    geometries = [((2, 2), (2, 2), (0, 0)), ((3, 3), (2, 2), (1, 1)), ((3, 2), (1, 2), (1, 0)),
                  ((1, 1), (1, 1), (0, 0)), ((4, 4), (3, 3), (2, 1))]
    cases = 0
    combos = list(itertools.product(
        geometries, [torch.float32, torch.float64], ["shift", "clamp"], ["full", "scalar", "channel"]))
    if not full:  # every geometry, dtype, mode and α shape at least once
        combos = [c for i, c in enumerate(combos) if i % 3 == (i // 12) % 3]
    for (geom, dtype, negative, shape) in combos:
        k, s, p = geom
        g = torch.Generator().manual_seed(cases)
        x = torch.randn(2, 3, 9, 8, generator=g, dtype=dtype)
        x[x.abs() < 0.3] = 0.0  # exact zeros: the ln floor, ties, clamp's kink
        ho, wo = (9 + 2 * p[0] - k[0]) // s[0] + 1, (8 + 2 * p[1] - k[1]) // s[1] + 1
        ashape = {"full": (2, 3, ho, wo), "scalar": (), "channel": (1, 3, 1, 1)}[shape]
        alpha = torch.rand(ashape, generator=g, dtype=dtype) * 8 - 1  # some α < 0: clipped, no gradient
        gy = torch.randn(2, 3, ho, wo, generator=g, dtype=dtype)
        args = [t.to(device) for t in (x, alpha)]
        ours = run(*args, geom, negative, "triton", gy.to(device))
        ref = run(x, alpha, geom, negative, "torch", gy)
        tol = 1e-10 if dtype == torch.float64 else 2e-4
        for got, want in zip(ours, ref):
            got = got.cpu()
            assert got.shape == want.shape, (geom, shape)
            err = (got - want).abs().max()
            assert torch.allclose(got, want, rtol=tol, atol=tol), (geom, dtype, negative, shape, err)
        cases += 1
    shape = (2, 3, 7, 6) if full else (1, 3, 4, 4)  # gradcheck: two forwards per input element
    x = (torch.rand(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) + 0.05).to(device)
    alpha = torch.tensor([[[[0.5]], [[2.0]], [[6.0]]]], dtype=torch.float64, device=device)
    fn = lambda a, b: p_pool2d(a, b, (3, 2), (2, 1), (1, 0), negative="clamp", impl="triton")
    assert torch.autograd.gradcheck(fn, (x.requires_grad_(), alpha.requires_grad_()))
    print("ok", cases, len(combos))
    """
)


def _check(device: str, interpret: bool, full: bool) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("TRITON_INTERPRET", None)
    if interpret:
        env["TRITON_INTERPRET"] = "1"  # read when the kernels are defined: set before the module is imported
    proc = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", CHECK, device, "full" if full else "some"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0 and proc.stdout.startswith("ok 60" if full else "ok 20"), proc.stderr[-3000:]


def test_triton_kernels_equal_the_torch_path_in_the_interpreter():
    _check("cpu", interpret=True, full=False)


@pytest.mark.slow
def test_triton_kernels_every_case_in_the_interpreter():
    _check("cpu", interpret=True, full=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_triton_kernels_equal_the_torch_path_on_cuda():
    _check("cuda", interpret=False, full=True)


def test_triton_is_refused_where_it_cannot_run():
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("the interpreter runs Triton on CPU")
    with pytest.raises(RuntimeError, match="Triton P-pooling needs a CUDA tensor"):
        from poolcli.ops.ppool import p_pool2d

        p_pool2d(torch.rand(1, 1, 4, 4), 1.0, impl="triton")
