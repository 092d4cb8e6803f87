"""Fused CPU kernels: plain C sources in ``kernels/``, compiled on first use, called through ctypes.

Why not a torch C++ extension: the kernels need no torch or Python headers (they work on raw data
pointers), so one C file compiles in about a second with the system C compiler, needs no ninja and no
build step at install time, and can use ``-march=native`` because it is built on the machine that runs
it. The shared library is cached under ``$POOLCLI_CACHE_DIR`` (default ``~/.cache/poolcli``), keyed by
the sources, flags, compiler and CPU, and written atomically, so parallel processes can race safely.

No compiler, a failed build, a non-CPU tensor or ``POOLCLI_NATIVE=0`` all fall back to the pure torch
implementation with the same maths; ``native_status()`` says which path is in use and why.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

KERNEL_DIR = Path(__file__).parent / "kernels"
_ABI = {"ppool": 2}
_P, _I, _MODE = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
_GEOM = [_I] * 11 + [_MODE, _I, _I]  # C, h, w, ho, wo, kh, kw, sh, sw, ph, pw, mode, n0, n1
_X_ALPHA = [_P, _P, _I, _I, _I, _I]  # x, α and α's four strides
_SIGNATURES = {  # fwd writes y; bwd reads y, gy and writes gx, gα; one symbol per element type
    "ppool": {
        f"ppool_{step}_{t}": _X_ALPHA + [_P] * buffers + _GEOM
        for step, buffers in (("fwd", 1), ("bwd", 4))
        for t in ("f32", "f64")
    },
}
_FLAG_SETS = (
    ["-O3", "-march=native", "-ffast-math", "-fopenmp-simd", "-fPIC"],
    ["-O3", "-ffast-math", "-fPIC"],  # compilers without -march=native
)
_lock = threading.Lock()
_loaded: dict[str, ctypes.CDLL | None] = {}
_why: dict[str, str] = {}
_pool: ThreadPoolExecutor | None = None


def _forget_pool() -> None:  # a forked child inherits the pool object but not its threads
    global _pool
    _pool = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def cache_dir() -> Path:
    root = os.environ.get("POOLCLI_CACHE_DIR")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "poolcli"


def _compiler() -> str | None:
    for cand in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if cand and (found := shutil.which(cand)):
            return found
    return None


def _cpu_fingerprint() -> str:
    """Model and feature flags: a library built with -march=native must not be reused on another CPU."""
    info = platform.machine() + platform.system()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "flags", "Features", "CPU part")):
                info += line
                if line.startswith(("flags", "Features")):
                    break
    except OSError:
        info += platform.processor()
    return info


def _build(name: str, cc: str) -> Path:
    src = KERNEL_DIR / f"{name}.c"
    blob = b"".join(p.read_bytes() for p in sorted(KERNEL_DIR.glob("*.[ch]")))
    machine = (subprocess.run([cc, "--version"], capture_output=True, text=True).stdout + _cpu_fingerprint()).encode()
    errors = []
    for flags in _FLAG_SETS:
        key = hashlib.sha256(blob + " ".join(flags).encode() + machine)
        out = cache_dir() / "kernels" / f"{name}-{key.hexdigest()[:16]}.so"
        if out.exists():
            return out
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
            obj, lib = Path(tmp) / f"{name}.o", Path(tmp) / f"{name}.so"
            # compile with -ffast-math, link without it: linking with it would pull in crtfastmath,
            # which flips the whole process to flush-denormals-to-zero
            steps = ([cc, *flags, "-c", str(src), "-o", str(obj)], [cc, "-shared", str(obj), "-o", str(lib), "-lm"])
            for cmd in steps:
                res = subprocess.run(cmd, capture_output=True, text=True)
                if res.returncode:
                    errors.append(f"{' '.join(cmd[:3])}...: {(res.stderr.strip().splitlines() or ['?'])[-1]}")
                    break
            else:
                os.replace(lib, out)
                return out
    raise RuntimeError("; ".join(errors))


def load(name: str) -> ctypes.CDLL | None:
    """The compiled kernel library ``name``, or None (with the reason in ``native_status()``)."""
    with _lock:
        if name in _loaded:
            return _loaded[name]
        lib = None
        if os.environ.get("POOLCLI_NATIVE", "1") == "0":
            _why[name] = "disabled by POOLCLI_NATIVE=0"
        elif (cc := _compiler()) is None:
            _why[name] = "no C compiler found (set CC)"
        else:
            try:
                path = _build(name, cc)
                lib = ctypes.CDLL(str(path))
                if getattr(lib, f"{name}_abi_version")() != _ABI[name]:
                    raise RuntimeError(f"{path} has a different ABI version")
                for fname, argtypes in _SIGNATURES[name].items():
                    getattr(lib, fname).argtypes = argtypes
                    getattr(lib, fname).restype = ctypes.c_int
                _why[name] = f"native ({path})"
            except (OSError, RuntimeError, AttributeError) as exc:
                lib = None
                _why[name] = f"build failed: {exc}"
        _loaded[name] = lib
        return lib


def native_status() -> dict[str, str]:
    """Which implementation each kernel uses, after trying to load it."""
    for name in _ABI:
        load(name)
    return dict(_why)


def run_planes(fn: Callable[[int, int], int], planes: int, work_per_plane: int) -> None:
    """Call ``fn(n0, n1)`` over [0, planes) split across torch's intra-op thread count.

    ctypes drops the GIL during the foreign call, so the ranges run in parallel. Small jobs stay on the
    calling thread (thread hand-off costs tens of microseconds).
    """
    global _pool
    threads = max(1, min(torch.get_num_threads(), planes))
    if threads == 1 or planes * work_per_plane < 1 << 16:
        bounds = [(0, planes)]
    else:
        step = -(-planes // threads)
        bounds = [(i, min(i + step, planes)) for i in range(0, planes, step)]
    if len(bounds) == 1:
        codes = [fn(*bounds[0])]
    else:
        with _lock:
            if _pool is None or _pool._max_workers < len(bounds):  # noqa: SLF001
                _pool = ThreadPoolExecutor(max_workers=len(bounds), thread_name_prefix="poolcli-native")
        codes = list(_pool.map(lambda b: fn(*b), bounds))
    if any(codes):
        raise MemoryError("native kernel could not allocate its scratch buffers")
