"""The fused membrane op against the reference loop: spikes bit-identical, gradients equal to
autograd of the reference for the input and every latent, in every GLIF mode and for LIF, PLIF and
GLIF_f; bytes saved for the backward; backend selection and fallbacks; and the Triton kernels,
run on CPU tensors by Triton's interpreter.

Tests marked ``compile`` use the C kernel, which the first of them builds (about a second; cached
in ``~/.cache/lightning_glif``).
"""

import ctypes
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from lightning_glif.neurons import GLIF, LIF, PLIF, ATan, GLIFf, Rectangular, Sigmoid, Triangle
from lightning_glif.neurons.functional import GLIFValues, glif_coefficients, membrane_sequence
from lightning_glif.neurons.fused import cpu, fused_available, membrane
from lightning_glif.neurons.surrogate import Surrogate

compile_ = pytest.mark.compile

NEURONS = {
    "glif-soft": lambda C, T: GLIF(C, T),
    "glif-hard": lambda C, T: GLIF(C, T, alpha="hard", beta="hard", gamma="hard"),
    "glif-static": lambda C, T: GLIF(C, T, alpha="static", beta="static", gamma="static"),
    "glif-pinned": lambda C, T: GLIF(C, T, alpha=1, beta=0, gamma=0.3),
    "glif-layer": lambda C, T: GLIF(C, T, granularity="layer", gamma="hard"),
    "glif-frozen-membrane": lambda C, T: GLIF(C, T, learn_membrane=False),
    "gliff": lambda C, T: GLIFf(C, T),
    "lif-hard": lambda C, T: LIF(C, T, decay=0.25),
    "lif-soft": lambda C, T: LIF(C, T, reset="soft"),
    "plif-layer": lambda C, T: PLIF(C, T),
    "plif-channel": lambda C, T: PLIF(C, T, granularity="channel", reset="soft"),
}
# linear [T, B, C]; conv [T, B, C, H, W]; one row longer than the kernel's 512-element tile
# (two whole tiles and a part), rows of exactly one tile and one element more; T = 1 (only the
# kernels' first-step branches) and T = 16; rows shorter than a vector (S = 3).
SHAPES = {"linear": (6, 5, 7), "conv": (6, 3, 4, 5, 5), "long-row": (3, 2, 2, 1100),
          "one-tile": (2, 2, 3, 512), "tile-plus-one": (3, 1, 2, 513), "T1": (1, 4, 3, 6, 6),
          "T16": (16, 2, 3, 4, 5), "short-row": (5, 3, 4, 3)}
SURROGATES = [Rectangular(), Rectangular(width=0.6), ATan(alpha=3.0), Sigmoid(), Triangle(0.8)]


def spread(m: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Move every latent away from its init so that each gate and parameter matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return m


def current(shape, dtype=torch.float32, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * 0.8 + 0.3).to(dtype)


def run(m, x, backend, w):
    """Spikes and the gradients of (spikes * w).sum() w.r.t. x and every parameter."""
    m.backend = backend
    x = x.detach().requires_grad_()
    spikes = m(x)
    params = [x, *m.parameters()]
    return spikes, torch.autograd.grad((spikes * w).sum(), params)


def assert_grads_close(got, want, rtol):
    for g1, g2 in zip(got, want, strict=True):
        scale = g2.abs().max().item() + 1e-30
        torch.testing.assert_close(g1, g2, rtol=rtol, atol=rtol * scale)


# ---------------------------------------------------------------- C kernel vs reference
@compile_
@pytest.mark.parametrize("shape", list(SHAPES.values()), ids=list(SHAPES))
@pytest.mark.parametrize("name", list(NEURONS))
def test_fused_equals_reference(name, shape):
    C, T = shape[2], shape[0]
    m = spread(NEURONS[name](C, T))
    x, w = current(shape), current(shape, seed=2)
    want = run(m, x, "reference", w)
    got = run(m, x, "fused", w)
    assert torch.equal(got[0], want[0])  # bit-identical spikes
    assert 0 < want[0].mean() < 1
    assert_grads_close(got[1], want[1], rtol=1e-5)
    assert got[1][0].abs().sum() > 0


@compile_
@pytest.mark.parametrize("detach_reset", [False, True])
@pytest.mark.parametrize("surrogate", SURROGATES, ids=repr)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_every_surrogate_and_detach_reset(surrogate, detach_reset, dtype):
    shape = (5, 4, 3, 6, 6)
    m = spread(GLIF(3, 5, surrogate=surrogate, detach_reset=detach_reset)).to(dtype)
    x, w = current(shape, dtype), current(shape, dtype, seed=2)
    want = run(m, x, "reference", w)
    got = run(m, x, "fused", w)
    assert torch.equal(got[0], want[0])
    assert_grads_close(got[1], want[1], rtol=1e-5 if dtype == torch.float32 else 1e-11)


@compile_
def test_threshold_ties_do_not_fire_in_either_path():
    # Binary fractions everywhere: many membranes land exactly on the threshold; both paths must
    # agree that a tie does not fire (strictly >).
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, 33, (8, 8, 3, 8, 8), generator=g).float() / 32
    half = torch.full((3,), 0.5)
    exact = GLIFValues(alpha=half, beta=0 * half, gamma=half, tau=half / 2, v_threshold=half,
                       v_leak=half / 8, v_reset=half, conductance=torch.full((8, 3), 0.5))
    lif = LIF(3, 8, decay=0.5, v_threshold=0.5)
    for c, surrogate in ((lif.coefficients(), lif.surrogate),
                         (glif_coefficients(exact), Triangle())):
        spikes, u = membrane_sequence(x, c, surrogate, return_membrane=True)
        assert (u == c.broadcast_to(2).v_threshold).sum() > 10  # ties happened
        assert torch.equal(membrane(x, c, surrogate, backend="fused"), spikes)


@compile_
def test_random_data_bit_identical_over_many_seeds():
    m = GLIF(16, 6)
    for seed in range(5):
        spread(m, seed)
        x = current((6, 8, 16, 9, 9), seed=seed) * 1.5
        c = m.coefficients()
        assert torch.equal(membrane(x, c, m.surrogate, backend="fused"),
                           membrane(x, c, m.surrogate, backend="reference"))


@compile_
@pytest.mark.parametrize("name", ["glif-soft", "glif-layer", "lif-hard", "plif-layer"])
def test_bf16_autocast_input(name):
    # Under autocast the current arrives in bf16; the membrane stays float32 in both paths.
    shape = (4, 6, 5, 3, 3)
    m = spread(NEURONS[name](5, 4))
    x, w = current(shape, torch.bfloat16), current(shape, torch.bfloat16, seed=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = run(m, x, "reference", w)
        got = run(m, x, "fused", w)
    assert got[0].dtype == torch.bfloat16 and torch.equal(got[0], want[0])
    assert got[1][0].dtype == torch.bfloat16
    # The input gradient is rounded to bf16 at the end: one bf16 ulp apart at most.
    assert_grads_close(got[1][:1], want[1][:1], rtol=1e-2)
    assert_grads_close(got[1][1:], want[1][1:], rtol=1e-5)


def saved_bytes(fn) -> int:
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total


@compile_
@pytest.mark.parametrize("name", ["glif-soft", "glif-layer", "lif-hard"])
def test_saved_bytes_per_element_and_step(name):
    T, B, C, H, W = 6, 4, 16, 8, 8
    m = NEURONS[name](C, T)
    x = current((T, B, C, H, W)).requires_grad_()
    steps = x.numel()
    per_channel = 4 * C * 16 * (T + 5)  # coefficient maps: a few [C] / [T, C] tensors each
    m.backend = "fused"
    fused = saved_bytes(lambda: m(x))
    assert fused <= 5 * steps + per_channel, fused / steps
    m.backend = "reference"
    assert saved_bytes(lambda: m(x)) > 2 * fused  # the counter does see the reference's tensors


@compile_
def test_auto_picks_the_fused_op_on_cpu():
    m = GLIF(3, 4)
    x = current((4, 2, 3, 5))
    assert fused_available(x, m.coefficients(), m.surrogate) is None
    assert m.backend == "auto"
    assert saved_bytes(lambda: m(x.requires_grad_())) < 5 * x.numel() + 4096


@compile_
def test_inference_and_input_without_grad():
    m = spread(GLIF(4, 5))
    x = current((5, 3, 4, 6))
    with torch.no_grad():
        assert torch.equal(membrane(x, m.coefficients(), m.surrogate, backend="fused"),
                           membrane(x, m.coefficients(), m.surrogate, backend="reference"))
    # x without grad: the parameter gradients still match.
    got = torch.autograd.grad((m(x) * x).sum(), list(m.parameters()))
    m.backend = "reference"
    want = torch.autograd.grad((m(x) * x).sum(), list(m.parameters()))
    assert_grads_close(got, want, rtol=1e-5)


@compile_
def test_gradients_do_not_depend_on_the_thread_count():
    m = spread(GLIF(8, 6))
    shape_conv, shape_linear = (6, 8, 8, 10, 10), (6, 64, 8)
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, max(2, threads)):
            torch.set_num_threads(n)
            results.append([run(m, current(s), "fused", current(s, seed=2))
                            for s in (shape_conv, shape_linear)])
    finally:
        torch.set_num_threads(threads)
    for (o1, g1), (o2, g2) in zip(*results, strict=True):
        assert torch.equal(o1, o2)
        assert all(torch.equal(a, b) for a, b in zip(g1, g2, strict=True))


# At least membrane_stream_min_bytes() per output: spikes and input gradient are written with
# non-temporal stores. 32x32 rows are 64-byte aligned; 10x10 rows (400 bytes) are not, so the
# stores start and end with a scalar part.
STREAMED = {"aligned-rows": ((4, 16, 16, 32, 32), torch.float32),
            "unaligned-rows": ((4, 41, 64, 10, 10), torch.float32),
            "float64": ((4, 8, 16, 32, 32), torch.float64)}


@compile_
@pytest.mark.parametrize("shape,dtype", list(STREAMED.values()), ids=list(STREAMED))
def test_streamed_outputs_equal_reference(shape, dtype):
    threshold = cpu.load().membrane_stream_min_bytes()
    if threshold == 0:
        pytest.skip("this CPU's kernel has no non-temporal stores")
    assert math.prod(shape) * dtype.itemsize >= threshold  # the streamed path
    C, T = shape[2], shape[0]
    m = spread(GLIF(C, T)).to(dtype)
    x, w = current(shape, dtype), current(shape, dtype, seed=2)
    want = run(m, x, "reference", w)
    threads = torch.get_num_threads()
    try:
        got = []
        for n in (1, max(2, threads)):
            torch.set_num_threads(n)
            got.append(run(m, x, "fused", w))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(got[0][0], want[0])
    assert 0 < want[0].mean() < 1
    assert_grads_close(got[0][1], want[1], rtol=1e-5 if dtype == torch.float32 else 1e-11)
    # and the same bits on any number of threads
    assert torch.equal(got[1][0], got[0][0])
    assert all(torch.equal(a, b) for a, b in zip(got[1][1], got[0][1], strict=True))


@compile_
def test_expanded_upstream_gradient():
    # spikes.sum().backward() hands the op a stride-0 gradient.
    m = GLIF(3, 4)
    x = current((4, 2, 3, 5)).requires_grad_()
    m(x).sum().backward()
    gx = x.grad.clone()
    x.grad = None
    m.backend = "reference"
    m(x).sum().backward()
    torch.testing.assert_close(gx, x.grad, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- selection and fallbacks
class ShiftedRectangular(Rectangular):
    """A subclass may change the derivative, so the fused op must not take it."""

    def derivative(self, v):
        return super().derivative(v - 0.1)


def test_unknown_surrogate_falls_back_or_raises():
    m = GLIF(3, 4, surrogate=ShiftedRectangular())
    x = current((4, 2, 3))
    assert "ShiftedRectangular" in fused_available(x, m.coefficients(), m.surrogate)
    want = membrane_sequence(x, m.coefficients(), m.surrogate)
    assert torch.equal(m(x), want)
    m.backend = "fused"
    with pytest.raises(RuntimeError, match="ShiftedRectangular.*backend='auto'"):
        m(x)


def test_custom_surrogate_base_class_is_not_fused():
    class Box(Surrogate):
        def derivative(self, v):
            return (v.abs() < 0.5).to(v.dtype)

    assert "Box" in fused_available(current((2, 1, 1)), GLIF(1, 2).coefficients(), Box())


@pytest.mark.parametrize("cls", [GLIF, GLIFf, LIF, PLIF])
def test_backend_option_is_validated(cls):
    assert cls(2, 3, backend="reference").backend == "reference"
    with pytest.raises(ValueError, match="auto, fused, reference"):
        cls(2, 3, backend="cuda")


def test_missing_compiler_warns_once_and_falls_back(monkeypatch):
    def no_compiler():
        raise RuntimeError("no C compiler found (set CC or install gcc/clang)")

    monkeypatch.setattr(cpu, "_lib", None)
    monkeypatch.setattr(cpu, "_error", None)
    monkeypatch.setattr(cpu, "_build", no_compiler)
    m = spread(GLIF(3, 4))
    x = current((4, 2, 3, 5))
    with pytest.warns(RuntimeWarning, match="reference PyTorch loop.*no C compiler"):
        y = m(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(m(x), y)  # no second warning
    assert torch.equal(y, membrane_sequence(x, m.coefficients(), m.surrogate))
    m.backend = "fused"
    with pytest.raises(RuntimeError, match="could not be built"):
        m(x)


# ---------------------------------------------------------------- the kernel library's ABI
@compile_
def test_abi_version_is_written_once_and_passed_to_the_compiler(tmp_path):
    # cpu.ABI_VERSION reaches the C code only through -DMEMBRANE_ABI_VERSION (also hashed)
    assert f"-DMEMBRANE_ABI_VERSION={cpu.ABI_VERSION}" in cpu.COMMON_FLAGS
    assert cpu.load().membrane_abi_version() == cpu.ABI_VERSION
    cc = cpu._compiler()
    flags = [f for f in cpu.COMMON_FLAGS if not f.startswith("-DMEMBRANE_ABI_VERSION")]
    source = str(cpu.SOURCES[0])
    # without the macro, membrane.c refuses to build, saying why
    done = subprocess.run([cc, *flags, "-fsyntax-only", source], capture_output=True, text=True)
    assert done.returncode != 0 and "MEMBRANE_ABI_VERSION is not defined" in done.stderr
    # with it, the library reports what it was given
    lib = tmp_path / "abi7.so"
    cmd = [cc, "-O0", *flags, "-DMEMBRANE_ABI_VERSION=7", source, "-o", str(lib), "-lm"]
    subprocess.run(cmd, check=True, capture_output=True)
    assert ctypes.CDLL(str(lib)).membrane_abi_version() == 7


@compile_
def test_a_library_of_another_abi_is_refused(monkeypatch):
    cpu.load()  # the cached library, built with the current ABI_VERSION
    monkeypatch.setattr(cpu, "_lib", None)
    monkeypatch.setattr(cpu, "_error", None)
    monkeypatch.setattr(cpu, "ABI_VERSION", cpu.ABI_VERSION + 1)
    with pytest.warns(RuntimeWarning, match=r"reports ABI version \d+, this package needs"):
        assert cpu.load() is None
    assert "delete it to rebuild" in cpu.build_error()


# ---------------------------------------------------------------- Triton kernels
# Triton's interpreter runs the kernels on CPU tensors, but only if TRITON_INTERPRET=1 is set before
# Triton is first imported; so the test_interpreted_* tests run in a child process that sets it.
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


def test_triton_kernels_under_the_interpreter():
    pytest.importorskip("triton")
    if INTERPRETED:
        pytest.skip("this is the child process")
    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(Path(__file__)),
           "-k", "test_interpreted_triton"]
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert "skipped" not in done.stdout and " passed" in done.stdout, done.stdout[-2000:]


@pytest.fixture(scope="module")
def triton_engine():
    if not INTERPRETED:
        pytest.skip("runs in the child process of test_triton_kernels_under_the_interpreter")
    from lightning_glif.neurons.fused import triton_kernels

    triton_kernels.BLOCK = 16  # several programs per channel, and masked lanes, on small tensors
    return triton_kernels


def triton_run(engine, m, x, w):
    from lightning_glif.neurons.fused import _fused

    x = x.detach().requires_grad_()
    spikes = _fused(engine, x, m.coefficients(), m.surrogate, m.detach_reset, torch.float32)
    spikes = spikes.to(x.dtype)
    return spikes, torch.autograd.grad((spikes * w).sum(), [x, *m.parameters()])


@pytest.mark.parametrize("shape", [(4, 3, 5), (3, 2, 3, 5, 7)], ids=["linear", "conv"])
@pytest.mark.parametrize("name", ["glif-soft", "glif-hard", "glif-layer", "plif-layer"])
def test_interpreted_triton_equals_reference(triton_engine, name, shape):
    m = spread(NEURONS[name](shape[2], shape[0]))
    x, w = current(shape), current(shape, seed=2)
    want = run(m, x, "reference", w)
    got = triton_run(triton_engine, m, x, w)
    assert torch.equal(got[0], want[0])
    assert_grads_close(got[1], want[1], rtol=1e-5)


@pytest.mark.parametrize("detach_reset", [False, True])
@pytest.mark.parametrize("surrogate", SURROGATES[1:], ids=repr)
def test_interpreted_triton_surrogates(triton_engine, surrogate, detach_reset):
    shape = (4, 3, 2, 11)
    m = spread(GLIF(2, 4, surrogate=surrogate, detach_reset=detach_reset))
    x, w = current(shape), current(shape, seed=2)
    want = run(m, x, "reference", w)
    got = triton_run(triton_engine, m, x, w)
    assert torch.equal(got[0], want[0])
    assert_grads_close(got[1], want[1], rtol=1e-5)


def test_interpreted_triton_reads_bf16_input(triton_engine):
    shape = (4, 3, 2, 13)
    m = spread(GLIF(2, 4))
    x, w = current(shape, torch.bfloat16), current(shape, torch.bfloat16, seed=2)
    want = run(m, x, "reference", w)
    got = triton_run(triton_engine, m, x, w)
    assert got[0].dtype == torch.bfloat16 and torch.equal(got[0], want[0])
    assert_grads_close(got[1][:1], want[1][:1], rtol=1e-2)
    assert_grads_close(got[1][1:], want[1][1:], rtol=1e-5)


def test_interpreted_triton_custom_ops_pass_opcheck(triton_engine):
    # The torch.library ops with the Triton engine: fake tensors (shapes, dtypes, strides: the
    # Triton backward's coefficient gradients are a transposed sum, copied contiguous), autograd
    # registration, AOT dispatch. bf16 input, float32 coefficients, as under autocast on CUDA.
    from lightning_glif.neurons.fused import membrane_bwd, membrane_fwd

    shape = (3, 2, 2, 5)
    x = current(shape, torch.bfloat16).requires_grad_()
    coef = torch.tensor([[0.8, 0.5], [1.0, 0.0], [0.05, 0.1], [0.0, 0.5], [0.5, 0.6]])
    gain = torch.full((3, 2), 0.9)
    torch.library.opcheck(membrane_fwd, (x, coef.requires_grad_(), gain, "triton", 3, 0.8, 1.25,
                                         False))
    grad = current(shape, torch.bfloat16, seed=2)
    torch.library.opcheck(membrane_bwd, (x.detach(), grad, coef.detach(), gain, "triton", 0, 0.5,
                                         1.0, True))


@compile_
def test_cuda_kernels_compile_without_fma():
    # Without a GPU, Triton still compiles to PTX for a given target: this checks the kernels
    # type-check on the real compiler (incl. S = 1 specialised as a constant) and that no
    # multiply-add is fused (which would round differently from the reference).
    pytest.importorskip("triton")
    try:
        import triton
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
    except ImportError as e:
        pytest.skip(f"this Triton has no ahead-of-time compile API: {e}")
    from lightning_glif.neurons.fused import triton_kernels as tk

    ptr = {n: "*fp32" for n in ("grad_ptr", "grad_x_ptr", "scratch_ptr", "partial_ptr",
                                "coef_ptr", "gain_ptr")}
    sizes = {n: "i32" for n in ("T", "N", "C", "S", "BS")}
    forward = ASTSource(
        fn=tk._forward_kernel,
        signature={"x_ptr": "*bf16", "out_ptr": "*bf16", "coef_ptr": "*fp32",
                   "gain_ptr": "*fp32", **sizes, "S": "constexpr", "BLOCK": "constexpr"},
        constexprs={(7,): 1, (9,): 1024},
    )
    backward = ASTSource(
        fn=tk._backward_kernel,
        signature={"x_ptr": "*fp32", **ptr, **sizes, "p": "fp32", "q": "fp32",
                   "KIND": "constexpr", "KEEP_RESET": "constexpr", "BLOCK": "constexpr"},
        constexprs={(14,): 1, (15,): True, (16,): 1024},
    )
    for src in (forward, backward):
        kernel = triton.compile(src, target=GPUTarget("cuda", 90, 32),
                                options={"num_warps": 4, "enable_fp_fusion": False})
        ptx = kernel.asm["ptx"]
        assert "ld.global" in ptx and "fma.rn" not in ptx


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", ["glif-soft", "glif-hard", "glif-layer", "lif-hard"])
def test_cuda_fused_equals_reference(name, dtype):
    shape = (6, 8, 16, 12, 12)
    m = spread(NEURONS[name](16, 6)).cuda()
    x, w = current(shape, dtype).cuda(), current(shape, dtype, seed=2).cuda()
    assert fused_available(x, m.coefficients(), m.surrogate) is None
    want = run(m, x, "reference", w)
    got = run(m, x, "fused", w)
    assert torch.equal(got[0], want[0])
    rtol = 1e-2 if dtype == torch.bfloat16 else 1e-5
    assert_grads_close(got[1][:1], want[1][:1], rtol=rtol)
    assert_grads_close(got[1][1:], want[1][1:], rtol=1e-4)
