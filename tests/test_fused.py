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
import re
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from lightning_glif.neurons import GLIF, LIF, PLIF, ATan, GLIFf, Rectangular, Sigmoid, Triangle
from lightning_glif.neurons.functional import GLIFValues, glif_coefficients, membrane_sequence
from lightning_glif.neurons.fused import (
    cpu,
    first_use_results,
    fused_available,
    membrane,
    use_engine,
)
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
SHAPES = {
    "linear": (6, 5, 7),
    "conv": (6, 3, 4, 5, 5),
    "long-row": (3, 2, 2, 1100),
    "one-tile": (2, 2, 3, 512),
    "tile-plus-one": (3, 1, 2, 513),
    "T1": (1, 4, 3, 6, 6),
    "T16": (16, 2, 3, 4, 5),
    "short-row": (5, 3, 4, 3),
}
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
    exact = GLIFValues(
        alpha=half,
        beta=0 * half,
        gamma=half,
        tau=half / 2,
        v_threshold=half,
        v_leak=half / 8,
        v_reset=half,
        conductance=torch.full((8, 3), 0.5),
    )
    lif = LIF(3, 8, decay=0.5, v_threshold=0.5)
    for c, surrogate in (
        (lif.coefficients(), lif.surrogate),
        (glif_coefficients(exact), Triangle()),
    ):
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
        assert torch.equal(
            membrane(x, c, m.surrogate, backend="fused"),
            membrane(x, c, m.surrogate, backend="reference"),
        )


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
        assert torch.equal(
            membrane(x, m.coefficients(), m.surrogate, backend="fused"),
            membrane(x, m.coefficients(), m.surrogate, backend="reference"),
        )
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
            results.append(
                [
                    run(m, current(s), "fused", current(s, seed=2))
                    for s in (shape_conv, shape_linear)
                ]
            )
    finally:
        torch.set_num_threads(threads)
    for (o1, g1), (o2, g2) in zip(*results, strict=True):
        assert torch.equal(o1, o2)
        assert all(torch.equal(a, b) for a, b in zip(g1, g2, strict=True))


# At least membrane_stream_min_bytes() per output: spikes and input gradient are written with
# non-temporal stores. 32x32 rows are 64-byte aligned; 10x10 rows (400 bytes) are not, so the
# stores start and end with a scalar part.
STREAMED = {
    "aligned-rows": ((4, 16, 16, 32, 32), torch.float32),
    "unaligned-rows": ((4, 41, 64, 10, 10), torch.float32),
    "float64": ((4, 8, 16, 32, 32), torch.float64),
}


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


# ---------------------------------------------------------------- the first-use check
def engine(name, forward=None, backward=None):
    """An engine for ``use_engine``: the C kernel, with ``forward``/``backward`` replaced where
    given, counting its calls in ``.calls``."""
    calls = {"forward": 0, "backward": 0}

    def counted(which, fn):
        def call(*args):
            calls[which] += 1
            return fn(*args)

        return call

    return SimpleNamespace(
        NAME=name, COMPUTE_DTYPES=cpu.COMPUTE_DTYPES, READS_HALF_PRECISION=False, calls=calls,
        forward=counted("forward", forward or cpu.forward),
        backward=counted("backward", backward or cpu.backward),
    )  # fmt: skip


def flipped_spike(x, coef, gain):
    out = cpu.forward(x, coef, gain)
    out.view(-1)[0] = 1 - out.view(-1)[0]
    return out


def kernel_fault(*args):
    raise RuntimeError("simulated kernel fault")


def scaled_gradient(which):
    """A backward whose input (``which = None``) or coefficient row ``which`` (0-4: decay, hard,
    leak, soft, v_threshold; 5: the gain) gradient is 5% off."""

    def backward(*args):
        gx, gc, gg = cpu.backward(*args)
        if which is None:
            return gx * 1.05, gc, gg
        if which == 5:
            return gx, gc, gg * 1.05
        gc = gc.clone()
        gc[which] *= 1.05
        return gx, gc, gg

    return backward


BROKEN = {
    "flipped-spike": (dict(forward=flipped_spike), r"1 of \d+ spikes differ"),
    "forward-fault": (dict(forward=kernel_fault), "RuntimeError: simulated kernel fault"),
    "backward-fault": (dict(backward=kernel_fault), "RuntimeError: simulated kernel fault"),
    "input-gradient": (dict(backward=scaled_gradient(None)), "the input gradient differs"),
    **{f"{n}-gradient": (dict(backward=scaled_gradient(i)), f"the gradient of {n} differs")
       for i, n in enumerate(["decay", "hard", "leak", "soft", "v_threshold", "gain"])},
}  # fmt: skip


@compile_
@pytest.mark.parametrize("name", list(BROKEN))
def test_a_broken_engine_falls_back_with_a_warning_or_raises(name):
    kernels, reason = BROKEN[name]
    broken = engine(f"broken-{name}", **kernels)
    m = spread(GLIF(3, 4))
    x, w = current((4, 2, 3, 5)), current((4, 2, 3, 5), seed=2)
    want = run(m, x, "reference", w)
    with use_engine("cpu", broken):
        with pytest.warns(RuntimeWarning) as record:
            got = run(m, x, "auto", w)
        # one warning naming the combination and the reason, and the reference loop's results
        assert len(record) == 1
        message = str(record[0].message)
        assert f"engine broken-{name} on cpu, input float32 [T, B, C, ...]" in message
        assert "surrogate Rectangular" in message and "gain [T, C]" in message
        assert re.search(reason, message) and "first-use check" in message
        assert torch.equal(got[0], want[0])
        assert all(torch.equal(a, b) for a, b in zip(got[1], want[1], strict=True))
        with pytest.raises(RuntimeError, match=f"backend='fused' cannot run.*{reason}"):
            run(m, x, "fused", w)
        combination = message.split(") for ")[1].split("; the reference loop")[0]
        assert re.search(reason, first_use_results()[combination])
    assert broken.calls["forward"] == 1  # the check only: the calls above ran the reference


@compile_
def test_training_continues_on_the_reference_path():
    # A small net whose neuron's engine returns one flipped spike: after the warning, a few SGD
    # steps give exactly the reference loop's weights.
    def train(backend, steps=3):
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(6, 8), GLIF(8, 4, backend=backend),
                                  torch.nn.Linear(8, 3))  # fmt: skip
        opt = torch.optim.SGD(net.parameters(), lr=0.5)
        g = torch.Generator().manual_seed(1)
        for _ in range(steps):
            x, y = torch.randn(4, 5, 6, generator=g) * 2, torch.randint(0, 3, (5,), generator=g)
            loss = torch.nn.functional.cross_entropy(net(x).mean(0), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return net

    want = train("reference")
    broken = engine("flipped-in-training", forward=flipped_spike)
    with use_engine("cpu", broken), pytest.warns(RuntimeWarning, match="1 of .* spikes differ"):
        got = train("auto")
    assert broken.calls == {"forward": 1, "backward": 1}  # the check, then never again
    for (name, a), b in zip(got.named_parameters(), want.parameters(), strict=True):
        assert torch.equal(a, b), name
    assert not torch.equal(want[0].weight, train("reference", steps=0)[0].weight)  # it learnt


@compile_
def test_the_check_runs_once_per_combination():
    counting = engine("counting")
    m = spread(GLIF(3, 4))
    x = current((4, 2, 3, 5))
    with use_engine("cpu", counting), warnings.catch_warnings():
        warnings.simplefilter("error")  # a passing check warns about nothing
        # in inference mode (as Lightning's validation): the check enables gradients itself
        with torch.inference_mode():
            spikes = [m(x) for _ in range(3)]
        assert counting.calls == {"forward": 4, "backward": 1}  # 1 check + 3 calls
        m(x.double())  # a new combination: float64 input and compute
        m(x[..., 0])  # linear input [T, B, C]
        m(x[..., 0])
        LIF(3, 4)(x)  # layer-wise coefficients
        m.detach_reset = True
        m(x)
        m(x)
        assert counting.calls == {"forward": 5 + 9, "backward": 5}  # 5 checks, 9 calls
        results = {k: v for k, v in first_use_results().items() if "engine counting" in k}
    assert len(results) == 5 and set(results.values()) == {""}
    for new in ("input float64", "[T, B, C], ", "decay [], hard []", "detach_reset=True"):
        assert sum(new in k for k in results) == 1, new
    m.backend, m.detach_reset = "reference", False
    assert all(torch.equal(s, m(x)) for s in spikes)


@pytest.mark.slow
@compile_
def test_the_check_runs_while_compiling_and_its_fallback_is_compiled():
    # The first call of a new combination is a torch.compile(fullgraph=True) trace: the check
    # runs eagerly inside it (no graph break), and the fallback it chose is what gets compiled.
    m = spread(GLIF(3, 4))
    x = current((4, 2, 3, 5))
    broken = engine("flipped-while-compiling", forward=flipped_spike)
    with use_engine("cpu", broken), pytest.warns(RuntimeWarning, match="spikes differ"):
        got = torch.compile(m, fullgraph=True, backend="eager")(x)
    assert broken.calls["forward"] == 1
    m.backend = "reference"
    assert torch.equal(got, m(x))


def test_an_engine_cannot_take_a_built_in_name():
    impostor = engine("cpu")
    with pytest.raises(ValueError, match="'cpu' is taken by a built-in engine"):
        with use_engine("cpu", impostor):
            pass
    m = GLIF(3, 4)
    m(current((4, 2, 3)))
    assert impostor.calls["forward"] == 0


class NoKernelSurrogate(Rectangular):
    """A subclass of a built-in: no kernel (its derivative could differ)."""


def test_a_surrogate_without_kernel_warns_once_per_type():
    m = GLIF(3, 4, surrogate=NoKernelSurrogate())
    x = current((4, 2, 3))
    with pytest.warns(RuntimeWarning, match="NoKernelSurrogate.*backend='reference'.*silence"):
        m(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        GLIF(3, 4, surrogate=NoKernelSurrogate())(x)  # the same type: no second warning
        m.backend = "reference"
        m(x)


# ---------------------------------------------------------------- the kernel library's ABI
@pytest.mark.slow
@compile_
def test_abi_version_is_written_once_and_passed_to_the_compiler(tmp_path):
    # cpu.ABI_VERSION reaches the C code only through -DMEMBRANE_ABI_VERSION (also hashed)
    assert f"-DMEMBRANE_ABI_VERSION={cpu.ABI_VERSION}" in cpu.COMMON_FLAGS
    assert cpu.load().membrane_abi_version() == cpu.ABI_VERSION
    cc = cpu.compiler()
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
    assert "delete it to rebuild" in cpu.unavailable()


# ---------------------------------------------------------------- Triton kernels
# Triton's interpreter runs the kernels on CPU tensors, but only if TRITON_INTERPRET=1 is set before
# Triton is first imported; so the test_interpreted_* tests run in a child process that sets it.
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


@pytest.mark.slow
def test_triton_kernels_under_the_interpreter():
    pytest.importorskip("triton")
    if INTERPRETED:
        pytest.skip("this is the child process")
    root = Path(__file__).resolve().parents[1]
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        str(Path(__file__)),
        "-k",
        "test_interpreted_triton",
    ]
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
    with use_engine("cpu", triton_kernels):  # behind the dispatcher for CPU tensors
        yield triton_kernels


def triton_run(engine, m, x, w):
    """``run`` on the Triton engine (the first-use check included: ``backend="fused"`` raises if
    it fails)."""
    return run(m, x, "fused", w)


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
    torch.library.opcheck(
        membrane_fwd, (x, coef.requires_grad_(), gain, "triton", 3, 0.8, 1.25, False)
    )
    grad = current(shape, torch.bfloat16, seed=2)
    torch.library.opcheck(
        membrane_bwd, (x.detach(), grad, coef.detach(), gain, "triton", 0, 0.5, 1.0, True)
    )


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

    ptr = {
        n: "*fp32"
        for n in ("grad_ptr", "grad_x_ptr", "scratch_ptr", "partial_ptr", "coef_ptr", "gain_ptr")
    }
    sizes = {n: "i32" for n in ("T", "N", "C", "S", "BS")}
    forward = ASTSource(
        fn=tk.forward_kernel,
        signature={
            "x_ptr": "*bf16",
            "out_ptr": "*bf16",
            "coef_ptr": "*fp32",
            "gain_ptr": "*fp32",
            **sizes,
            "S": "constexpr",
            "BLOCK": "constexpr",
        },
        constexprs={(7,): 1, (9,): 1024},
    )
    backward = ASTSource(
        fn=tk.backward_kernel,
        signature={
            "x_ptr": "*fp32",
            **ptr,
            **sizes,
            "p": "fp32",
            "q": "fp32",
            "KIND": "constexpr",
            "KEEP_RESET": "constexpr",
            "BLOCK": "constexpr",
        },
        constexprs={(14,): 1, (15,): True, (16,): 1024},
    )
    for src in (forward, backward):
        kernel = triton.compile(
            src,
            target=GPUTarget("cuda", 90, 32),
            options={"num_warps": 4, "enable_fp_fusion": False},
        )
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
