"""CPU engine of the fused membrane op: the C kernel of ``membrane.c``, built once, called
through ctypes.

Why plain C rather than a PyTorch C++ extension: it builds in about a second (no PyTorch headers),
two flags pin the floating-point semantics (``-ffp-contract=off``, no ``-ffast-math``: the spikes
round exactly as the reference loop's), and ``-fopenmp`` resolves to the ``libgomp.so.1`` that
PyTorch has loaded, so both share one thread pool. The library is cached in
``$LIGHTNING_GLIF_CACHE`` (default ``$XDG_CACHE_HOME/lightning_glif`` or
``~/.cache/lightning_glif``), named by a hash of the sources, flags, compiler and CPU. Without a
working C compiler :func:`load` warns once and the neurons run the reference loop.
"""

from __future__ import annotations

import ctypes
import hashlib
import math
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
SOURCES = (HERE / "membrane.c", HERE / "membrane_body.h")
#: The calling convention of the kernel's functions: bump it when their signatures change. Passed
#: to the compiler as MEMBRANE_ABI_VERSION (so also hashed), returned by membrane_abi_version().
ABI_VERSION = 2

# Tried in order until one builds: native vector width first, then portable, then without the
# OpenMP runtime (e.g. Apple clang: one thread, still vectorised).
FLAG_SETS = tuple(
    tuple(f.split()) for f in ("-O3 -march=native -fopenmp", "-O3 -fopenmp", "-O3 -fopenmp-simd")
)
# -ffp-contract=off: no fused multiply-add, one rounding per operation as in PyTorch.
# -fno-math-errno -fno-trapping-math change no result (only errno and FP exception flags) but let
# floor/min/selects vectorise.
COMMON_FLAGS = (
    *"-std=c11 -shared -fPIC -ffp-contract=off -fno-math-errno -fno-trapping-math".split(),
    f"-DMEMBRANE_ABI_VERSION={ABI_VERSION}",
)

#: What an engine declares: its name in :mod:`.ops`, the dtypes it computes the membrane in, and
#: whether it reads bf16/fp16 input as is (here: converted to the compute dtype first).
NAME = "cpu"
COMPUTE_DTYPES = (torch.float32, torch.float64)
SUFFIX = {torch.float32: "f32", torch.float64: "f64"}  # of the kernel's function names
READS_HALF_PRECISION = False

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_error: str | None = None


def cache_dir() -> Path:
    """Where built kernels are kept (created on demand)."""
    default = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lightning_glif"
    return Path(os.environ.get("LIGHTNING_GLIF_CACHE") or default)


def compiler() -> str | None:
    """The C compiler the kernel is built with: ``$CC``, else the first of cc, gcc, clang."""
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return name
    return None


def _cpu_signature() -> str:
    """What -march=native depends on: the CPU model and feature flags."""
    try:
        text = Path("/proc/cpuinfo").read_text()
        lines = [ln for ln in text.splitlines() if ln.startswith(("model name", "flags"))]
        return "\n".join(sorted(set(lines)))
    except OSError:
        return platform.processor() or platform.machine()


def _build() -> Path:
    """Compile the kernel (or find it in the cache); raise RuntimeError saying why not."""
    cc = compiler()
    if cc is None:
        raise RuntimeError("no C compiler found (set CC or install gcc/clang)")
    try:
        version = subprocess.run(
            [cc, "--version"], capture_output=True, text=True, timeout=30
        ).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise RuntimeError(f"{cc} --version failed: {e}") from e
    sources = b"".join(p.read_bytes() for p in SOURCES)
    directory = cache_dir()
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError:  # read-only home: build per machine boot instead of once
        directory = Path(tempfile.gettempdir()) / "lightning_glif"
        directory.mkdir(parents=True, exist_ok=True)
    machine = "\0".join([version, _cpu_signature(), platform.platform()]).encode()
    targets = []
    for flags in FLAG_SETS:
        ident = b"\0".join([sources, repr((flags, COMMON_FLAGS)).encode(), machine])
        targets.append(directory / f"membrane-{hashlib.sha256(ident).hexdigest()[:20]}.so")
    for target in targets:
        if target.exists():
            return target
    errors = []
    for flags, target in zip(FLAG_SETS, targets, strict=True):
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=directory)
        os.close(fd)
        cmd = [cc, *flags, *COMMON_FLAGS, str(SOURCES[0]), "-o", tmp, "-lm"]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
            if done.returncode == 0:
                os.replace(tmp, target)  # atomic: concurrent builders all end with a whole file
                return target
            errors.append(f"{' '.join(cmd)}:\n{done.stderr.strip()[-2000:]}")
        except (OSError, subprocess.SubprocessError) as e:
            errors.append(f"{' '.join(cmd)}: {e}")
        Path(tmp).unlink(missing_ok=True)
    raise RuntimeError("the C compiler failed:\n" + "\n".join(errors))


def _declare(lib: ctypes.CDLL) -> None:
    ptr, i64, i32, f64 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_double
    for suffix in ("f32", "f64"):
        fwd = getattr(lib, f"membrane_forward_{suffix}")
        fwd.argtypes = [ptr, ptr, ptr, ptr, i64, i64, i64, i64]
        fwd.restype = None
        bwd = getattr(lib, f"membrane_backward_{suffix}")
        bwd.argtypes = [ptr, ptr, ptr, ptr, ptr, ptr, i64, i64, i64, i64, i32, f64, f64, i32]
        bwd.restype = i32
    lib.membrane_abi_version.restype = i32
    lib.membrane_linear_slices.restype = i32
    lib.membrane_stream_min_bytes.restype = i64


def load() -> ctypes.CDLL | None:
    """The built kernel library, or ``None`` (after one warning) if it cannot be built."""
    global _lib, _error
    with _lock:
        if _lib is None and _error is None:
            try:
                path = _build()
                lib = ctypes.CDLL(str(path))
                _declare(lib)
                if lib.membrane_abi_version() != ABI_VERSION:
                    raise RuntimeError(
                        f"the kernel library {path} reports ABI version "
                        f"{lib.membrane_abi_version()}, this package needs {ABI_VERSION}: "
                        "delete it to rebuild"
                    )
                _lib = lib
            except (RuntimeError, OSError) as e:
                _error = str(e)
                warnings.warn(
                    "lightning_glif: the fused CPU kernel could not be built, so neurons run the "
                    f"reference PyTorch loop (same results, slower). Reason: {e}",
                    RuntimeWarning,
                    stacklevel=4,  # the caller of _select (via unavailable)
                )
    return _lib


@torch.compiler.assume_constant_result
def unavailable() -> str:
    """Why the kernel cannot be loaded, ``""`` if it can (built on the first call). Constant under
    ``torch.compile``: Dynamo does not trace into the build (a lock, a subprocess)."""
    return "" if load() is not None else str(_error)


def _dims(x: torch.Tensor) -> tuple[int, int, int, int]:
    T, B, C = x.shape[:3]
    return T, B, C, math.prod(x.shape[3:])


def forward(x: torch.Tensor, coef: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
    """Spikes of the recurrence. ``x`` contiguous ``[T, B, C, ...]`` (float32 or float64),
    ``coef`` ``[5, C]`` (decay, hard, leak, soft, v_threshold), ``gain`` ``[T, C]``, same dtype."""
    lib = load()
    spikes = torch.empty_like(x)
    pointers = [t.data_ptr() for t in (x, spikes, coef, gain)]
    getattr(lib, f"membrane_forward_{SUFFIX[x.dtype]}")(*pointers, *_dims(x))
    return spikes


def backward(
    x: torch.Tensor,
    grad: torch.Tensor,
    coef: torch.Tensor,
    gain: torch.Tensor,
    surrogate: tuple[int, float, float],
    detach_reset: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients ``(x, coef, gain)`` of the spikes' loss given ``grad`` = dL/dspikes (contiguous,
    like ``x``); ``surrogate`` is ``(kind, p, q)`` from the dispatcher."""
    lib = load()
    T, B, C, S = _dims(x)
    slices = B if S > 1 else lib.membrane_linear_slices()
    partial = torch.zeros(slices, 5 + T, C, dtype=torch.float64)
    grad_x = torch.empty_like(x)
    pointers = [t.data_ptr() for t in (x, grad, grad_x, partial, coef, gain)]
    status = getattr(lib, f"membrane_backward_{SUFFIX[x.dtype]}")(
        *pointers, T, B, C, S, *surrogate, int(detach_reset)
    )
    if status != 0:
        raise MemoryError(f"fused membrane backward: kernel returned status {status}")
    total = partial.sum(0).to(x.dtype)
    return grad_x, total[:5], total[5:]
