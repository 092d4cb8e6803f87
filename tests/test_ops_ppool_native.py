"""The fused C kernel for P-pooling: equal to the torch implementation, built, cached and fallen back from."""

from __future__ import annotations

import shutil

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from poolcli.ops import native
from poolcli.ops.ppool import p_pool2d

HAVE_CC = any(shutil.which(c) for c in ("cc", "gcc", "clang"))


def _run(x, alpha, k, s, p, negative, impl, gy):
    x = x.detach().clone().requires_grad_()
    a = alpha.detach().clone().requires_grad_()
    y = p_pool2d(x, a, k, s, p, negative=negative, impl=impl)
    y.backward(gy)
    return y.detach(), x.grad, a.grad


@pytest.mark.skipif(not HAVE_CC, reason="no C compiler: the torch path is the only one")
def test_kernel_builds_where_a_compiler_exists():
    assert native.load("ppool") is not None, native.native_status()
    assert native.native_status()["ppool"].startswith("native")


@settings(max_examples=60, deadline=None)
@given(
    b=st.integers(1, 2),
    c=st.integers(1, 3),
    h=st.integers(1, 12),
    w=st.integers(1, 12),
    kh=st.integers(1, 4),
    kw=st.integers(1, 4),
    sh=st.integers(1, 3),
    sw=st.integers(1, 3),
    ph=st.integers(0, 2),
    pw=st.integers(0, 2),
    negative=st.sampled_from(["shift", "clamp"]),
    alpha_shape=st.sampled_from(["full", "scalar", "channel", "row"]),
    dtype=st.sampled_from([torch.float64, torch.float32]),
    seed=st.integers(0, 2**16),
)
def test_native_equals_torch_values_and_gradients(
    b, c, h, w, kh, kw, sh, sw, ph, pw, negative, alpha_shape, dtype, seed
):
    kh, kw = min(kh, h + 2 * ph), min(kw, w + 2 * pw)
    ph, pw = min(ph, kh // 2), min(pw, kw // 2)  # torch's rule: padding at most half the window
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, c, h, w, generator=g, dtype=dtype)
    x[x.abs() < 0.3] = 0.0  # exact zeros: the ln floor, ties at the minimum, clamp's kink
    ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    shape = {"full": (b, c, ho, wo), "scalar": (), "channel": (1, c, 1, 1), "row": (b, 1, ho, 1)}[alpha_shape]
    alpha = torch.rand(shape, generator=g, dtype=dtype) * 8 - 1  # some α < 0: clipped to 0, no gradient
    gy = torch.randn(b, c, ho, wo, generator=g, dtype=dtype)
    geom = ((kh, kw), (sh, sw), (ph, pw))
    ours = _run(x, alpha, *geom, negative, "native", gy)
    ref = _run(x, alpha, *geom, negative, "torch", gy)
    tol = 1e-11 if dtype == torch.float64 else 2e-4
    for got, want in zip(ours, ref):
        assert got.shape == want.shape
        assert torch.allclose(got, want, rtol=tol, atol=tol), (got - want).abs().max()


def test_native_gradcheck_with_broadcast_alpha_and_clamp():
    x = torch.rand(2, 3, 7, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) + 0.05
    alpha = torch.tensor([[[[0.5]], [[2.0]], [[6.0]]]], dtype=torch.float64, requires_grad=True)  # [1, C, 1, 1]
    fn = lambda a, b: p_pool2d(a, b, (3, 2), (2, 1), (1, 0), negative="clamp", impl="native")  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x.requires_grad_(), alpha))


def test_multithreaded_split_equals_single_thread():
    x = torch.rand(8, 16, 32, 32, generator=torch.Generator().manual_seed(1))  # big enough to be split
    alpha = torch.rand(8, 16, 16, 16, generator=torch.Generator().manual_seed(2)) * 5
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = p_pool2d(x, alpha, 2, impl="native")
        torch.set_num_threads(max(2, threads))
        many = p_pool2d(x, alpha, 2, impl="native")
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, many)
    assert torch.allclose(one, p_pool2d(x, alpha, 2, impl="torch"), rtol=1e-5, atol=1e-6)


def test_non_contiguous_input_and_alpha():
    x = torch.rand(2, 9, 9, 4).permute(0, 3, 1, 2)  # channels-last view
    alpha = (torch.rand(2, 4, 4, 4) * 3).transpose(2, 3)
    assert torch.allclose(
        p_pool2d(x, alpha, 3, 2, 0, impl="native"), p_pool2d(x, alpha, 3, 2, 0, impl="torch"), rtol=1e-5, atol=1e-6
    )


@pytest.fixture
def fresh_native(monkeypatch, tmp_path):
    """A native module state with nothing loaded yet and an empty kernel cache."""
    monkeypatch.setattr(native, "_loaded", {})
    monkeypatch.setattr(native, "_why", {})
    monkeypatch.setenv("POOLCLI_CACHE_DIR", str(tmp_path))
    return tmp_path


def test_disabled_by_environment_falls_back_to_torch(fresh_native, monkeypatch):
    monkeypatch.setenv("POOLCLI_NATIVE", "0")
    x = torch.rand(1, 2, 6, 6)
    assert native.load("ppool") is None and "POOLCLI_NATIVE=0" in native.native_status()["ppool"]
    assert torch.equal(p_pool2d(x, 2.0, 2), p_pool2d(x, 2.0, 2, impl="torch"))  # auto took the torch path
    with pytest.raises(RuntimeError, match="POOLCLI_NATIVE=0"):
        p_pool2d(x, 2.0, 2, impl="native")


def test_failed_build_falls_back_and_says_why(fresh_native, monkeypatch):
    monkeypatch.setenv("CC", shutil.which("false") or "false")
    assert native.load("ppool") is None
    assert native.native_status()["ppool"].startswith("build failed")
    assert not list(fresh_native.rglob("*.so"))  # nothing half-written in the cache
    x = torch.rand(1, 2, 6, 6)
    assert torch.allclose(p_pool2d(x, 0.0, 2), F.avg_pool2d(x, 2), atol=1e-7)


@pytest.mark.skipif(not HAVE_CC, reason="needs a C compiler")
def test_build_is_cached_by_content(fresh_native):
    assert native.load("ppool") is not None
    built = list(fresh_native.rglob("ppool-*.so"))
    assert len(built) == 1
    stamp = built[0].stat().st_mtime_ns
    native._loaded.clear()  # a new process: found in the cache, not rebuilt
    assert native.load("ppool") is not None
    assert list(fresh_native.rglob("ppool-*.so")) == built and built[0].stat().st_mtime_ns == stamp


def test_loading_leaves_denormals_alone():
    """The kernel is compiled with -ffast-math but linked without it: no process-wide flush-to-zero."""
    native.load("ppool")
    tiny = torch.tensor([1e-40], dtype=torch.float32)  # a float32 denormal
    assert (tiny * 1.0).item() != 0.0


def test_used_after_fork_in_a_child():
    import multiprocessing as mp

    x = torch.rand(8, 16, 32, 32)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        p_pool2d(x, 2.0, 2, impl="native")  # the parent's thread pool exists now
    finally:
        torch.set_num_threads(threads)
    ctx = mp.get_context("fork")
    with ctx.Pool(1) as pool:
        got = pool.apply_async(_child_pool, (x,)).get(timeout=60)  # a stale pool would hang: fail instead
    assert torch.equal(got, p_pool2d(x, 2.0, 2, impl="native"))


def _child_pool(x):
    torch.set_num_threads(2)  # so that the child splits the work across the (inherited) thread pool too
    return p_pool2d(x, 2.0, 2, impl="native")
