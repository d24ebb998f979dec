"""The GPU check (issues 13 and 33): the fused kernels' first-use check, Triton against the
reference loop, speed, a ResNet-19 step, mixed precision; one markdown table per part, and all of
them in one ``gpu.md`` ready for docs/performance.md.

    benchmarks/gpu_check.sh OUT                 # every part on CUDA, < 8 min on one H100
    python benchmarks/gpu_check.py firstuse --device cpu --out OUT      # the C kernel's checks
    python benchmarks/gpu_check.py correctness --device cpu --out OUT   # Triton interpreted, tiny
    python benchmarks/gpu_check.py precision --device cpu --out OUT     # bf16-mixed on the CPU

Parts (each writes ``OUT/<part>.md`` as it goes and ``OUT/<part>.json``, its PASS/FAIL/SKIP):

- ``firstuse``: the first-use check of :mod:`lightning_glif.neurons.fused` for the combinations
  the shipped configs use. Every neuron a config in ``conf/`` names (a ``neuron:`` entry, built
  with the plain values the config gives it), on conv ``[T, B, C, H, W]`` and linear
  ``[T, B, C]`` input in float32, bfloat16 and float16 (what ``32-true``, ``bf16-mixed`` and
  ``16-mixed`` hand a neuron): one forward and backward with ``backend="auto"``, as training runs
  it; then the verdict of every combination checked
  (:func:`~lightning_glif.neurons.fused.first_use_results`). Exit 1 if a neuron does not run
  fused (``backend="auto"`` then runs the reference loop for it on this machine). On the CPU it
  checks the C kernel.
- ``correctness``: every neuron of :mod:`lightning_glif.neurons` (GLIF in each gate mode, pinned,
  layer-wise, frozen membrane, every fused surrogate kernel and ``detach_reset``; GLIF_f, LIF,
  PLIF; any other exported membrane neuron with its defaults), in float32, bfloat16 and float16,
  on linear ``[T, B, C]`` and conv ``[T, B, C, H, W]`` inputs, T = 2, 6, 16 on CUDA: the neuron
  with ``backend="fused"`` (its first-use check included) against ``backend="reference"``: spikes
  bit-identical, input and parameter gradients within tolerance. On the CPU the Triton kernels
  run under ``TRITON_INTERPRET=1`` (set by this script before Triton is imported, as
  tests/test_fused.py does) on tiny shapes, put behind the dispatcher with
  :func:`~lightning_glif.neurons.fused.use_engine`. Exit 1 if a row fails.
- ``speed``: forward+backward time at the ResNet-19 CIFAR layer sizes ``[6, B, 128, 32, 32]``,
  ``[6, B, 256, 16, 16]``, ``[6, B, 512, 8, 8]`` (B = 64 on CUDA), with the contenders of
  ``benchmarks/baselines.py`` timed by ``benchmarks/neuron_speed.py``'s functions, plus
  SpikingJelly's cupy (or triton) backend where it has one and it is importable; missing
  packages are skipped with a line saying so.
- ``resnet19``: one ResNet-19 training step (T=6, batch 64 on CUDA) and peak memory
  (``torch.cuda.max_memory_allocated``), fused vs reference neuron; each backend in a child
  process of ``benchmarks/resnet19_step.py`` (its model building and timing).
- ``precision``: one epoch of ``train.py fit`` (:func:`lightning_glif.cli.main.cli_main`) with
  ``conf/experiment/cifar10_resnet19_t6.yaml`` on random images of CIFAR-10's shapes
  (:class:`benchmarks.random_cifar.RandomCIFAR10`, a few hundred, made in memory) under
  ``--trainer.precision 16-mixed`` and ``bf16-mixed``: wall time, losses finite, accuracy (chance
  level: the labels are random), and what the neurons received. ``16-mixed`` is CUDA-only in
  Lightning; on the CPU it is skipped, saying so.
- ``summary``: ``OUT/summary.md`` from the parts' results (a part without one, timed out or
  crashed, is a FAIL; exit 1 if any part failed), and ``OUT/gpu.md``: the date, the card
  (``torch.cuda.get_device_name()``), the torch, CUDA and Triton versions, the commit, the summary
  and every part's table, its headings under one ``##`` section to paste into
  docs/performance.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib
import inspect
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from anywhere in the repo

PARTS = ("firstuse", "correctness", "speed", "resnet19", "precision")
DTYPES = ("float32", "bfloat16", "float16")
#: Relative tolerance of the input gradient per input dtype (the fused op rounds it to the input
#: dtype at the end, as the reference does: one ulp apart at most), and of the parameter
#: gradients (float32 sums in another order; tests/test_fused.py's bounds).
X_RTOL = {"float32": 1e-5, "bfloat16": 1e-2, "float16": 1e-3}
PARAM_RTOL = {"cuda": 1e-4, "cpu": 1e-5}
#: Default correctness shapes: T x (linear [T, B, C], conv [T, B, C, H, W]). On CUDA the conv
#: rows have B*H*W = 1156 > the kernels' 1024-element block (two programs per channel, a masked
#: tail); on the CPU the interpreter runs with a 16-element block for the same reason. T = 4 is
#: left out for the H100's 8 minutes: Triton specialises on an int being 1 or a multiple of 16,
#: so T = 4 runs the variant that T = 2 and 6 compile, and T = 16 its own.
CUDA_TIMES = (2, 6, 16)
CUDA_SHAPES = ((48, 16), (4, 16, 17, 17))
CPU_SHAPES = ("2x3x4", "4x2x3x3x3")
INTERPRETER_BLOCK = 16
#: The first-use part's inputs, T = 6 as the CIFAR configs (the CPU: a quarter of the batch).
FIRSTUSE_SHAPES = {"conv": (6, 16, 16, 8, 8), "linear": (6, 64, 16)}
PAPER_LAYERS = ((128, 32, 32), (256, 16, 16), (512, 8, 8))  # ResNet-19 CIFAR, T = 6
PRECISION_CONFIG = "conf/experiment/cifar10_resnet19_t6.yaml"


# ------------------------------------------------------------------------------------ reporting
class Part:
    """One part's output: markdown lines printed and appended to ``OUT/<name>.md`` as they come
    (a part killed by its timeout leaves the rows it had), then ``OUT/<name>.json``."""

    def __init__(self, name: str, out: Path | None) -> None:
        self.name = name
        self.out = out
        self.start = time.perf_counter()
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            (out / f"{name}.md").write_text("")
            (out / f"{name}.json").unlink(missing_ok=True)

    def line(self, text: str = "") -> None:
        print(text, flush=True)
        if self.out is not None:
            with open(self.out / f"{self.name}.md", "a") as f:
                f.write(text + "\n")

    def header(self, cells: list[str]) -> None:
        self.line("| " + " | ".join(cells) + " |")
        self.line("|" + "|".join("---" for _ in cells) + "|")

    def row(self, cells: list[str]) -> None:
        self.line("| " + " | ".join(cells) + " |")

    def finish(self, status: str, note: str) -> int:
        seconds = time.perf_counter() - self.start
        self.line(f"\n**{self.name}: {status}** ({seconds:.1f} s): {note}")
        if self.out is not None:
            result = {"part": self.name, "status": status, "note": note, "seconds": seconds}
            (self.out / f"{self.name}.json").write_text(json.dumps(result, indent=1) + "\n")
        return 1 if status == "FAIL" else 0


def _device(name: str):
    import torch

    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit(f"--device {name}: {cuda_problem()}")
    return device


def cuda_problem() -> str | None:
    """Why PyTorch sees no CUDA device, ``None`` if it sees one."""
    import torch

    if torch.cuda.is_available():
        return None
    if torch.version.cuda is None:
        return f"this PyTorch ({torch.__version__}) is built without CUDA"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    hidden = f"; CUDA_VISIBLE_DEVICES={visible!r}" if visible is not None else ""
    return (
        f"PyTorch {torch.__version__} (CUDA {torch.version.cuda}) sees no CUDA device "
        f"(torch.cuda.is_available() is False: no GPU, no driver, or none visible{hidden})"
    )


def cmd_cuda(args) -> int:
    problem = cuda_problem()
    if problem:
        print(
            f"gpu_check: no CUDA: {problem}. The GPU check needs an NVIDIA GPU. Its CPU parts "
            "run without one: python benchmarks/gpu_check.py correctness --device cpu --out "
            "DIR (and precision).",
            file=sys.stderr,
        )
        return 1
    import torch

    print(
        f"gpu_check: CUDA {torch.version.cuda}, {torch.cuda.device_count()} device(s), "
        f"using {torch.cuda.get_device_name(0)}; torch {torch.__version__}"
    )
    return 0


# ---------------------------------------------------------------------------------- correctness
def neuron_cases() -> dict[str, Callable]:
    """id -> ``factory(C, T)``: GLIF in every gate mode and option that changes the kernels'
    work, and the LIF-family baselines; plus, with its defaults, any membrane neuron that
    :mod:`lightning_glif.neurons` exports and this list does not name (a newly added one)."""
    from lightning_glif import neurons
    from lightning_glif.neurons import GLIF, LIF, PLIF, ATan, GLIFf, Sigmoid, Triangle
    from lightning_glif.neurons.glif import GATE_MODES

    cases: dict[str, Callable] = {
        f"glif-{mode}": partial(GLIF, alpha=mode, beta=mode, gamma=mode) for mode in GATE_MODES
    }
    cases.update({
        "glif-mixed": partial(GLIF, alpha="soft", beta="hard", gamma="static_hard"),
        "glif-pinned": partial(GLIF, alpha=1, beta=0, gamma=0.3),
        "glif-layer": partial(GLIF, granularity="layer", gamma="hard"),
        "glif-frozen-membrane": partial(GLIF, learn_membrane=False),
        "glif-atan-detach": partial(GLIF, surrogate=ATan(alpha=3.0), detach_reset=True),
        "glif-sigmoid": partial(GLIF, surrogate=Sigmoid()),
        "glif-triangle": partial(GLIF, surrogate=Triangle(0.8)),
        "gliff": GLIFf,
        "gliff-layer": partial(GLIFf, granularity="layer"),
        "lif-hard": LIF,
        "lif-soft": partial(LIF, reset="soft"),
        "plif-layer": PLIF,
        "plif-channel-soft": partial(PLIF, granularity="channel", reset="soft"),
    })  # fmt: skip
    covered = {getattr(f, "func", f) for f in cases.values()}
    for name in neurons.__all__:
        cls = getattr(neurons, name)
        if (
            inspect.isclass(cls)
            and issubclass(cls, neurons.MembraneNeuron)
            and not inspect.isabstract(cls)
            and cls not in covered
        ):
            cases[f"{name.lower()}-defaults"] = cls
    return cases


def describe(factory: Callable) -> str:
    """``GLIF(alpha='hard', ...)``: the class and the options of a case."""
    cls = getattr(factory, "func", factory)
    options = ", ".join(f"{k}={v!r}" for k, v in getattr(factory, "keywords", {}).items())
    return f"{cls.__name__}({options})"


def spread(m, seed: int = 0):
    """Move every trainable latent away from its init, so that each gate and parameter matters
    (as tests/test_fused.py does)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return m


def current(shape, dtype, seed: int):
    """A deterministic input current (drawn on the CPU in float64, then cast)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * 0.8 + 0.3).to(dtype)


def grad_error(got, want, rtol: float) -> tuple[float, bool]:
    """``(max |got - want| / max |want| over the tensors, within tolerance)``; within means
    ``|got - want| <= rtol * max|want| + rtol * |want|`` everywhere (tests/test_fused.py's
    ``assert_grads_close``), the same dtype, and finite."""
    import torch

    worst, ok = 0.0, True
    for g1, g2 in zip(got, want, strict=True):
        ok &= g1.dtype == g2.dtype and g1.shape == g2.shape
        a, b = g1.double(), g2.double()
        scale = b.abs().max().item() + 1e-30
        diff = (a - b).abs()
        worst = max(worst, diff.max().item() / scale)
        ok &= bool(torch.isfinite(a).all()) and bool((diff <= rtol * scale + rtol * b.abs()).all())
    return worst, ok


def spikes_and_grads(m, x, w):
    """The neuron's spikes and the gradients of ``(spikes * w).sum()``: ``(spikes, input
    gradient, [parameter gradients])``."""
    import torch

    x = x.detach().requires_grad_()
    spikes = m(x)
    params = [p for p in m.parameters() if p.requires_grad]
    grads = torch.autograd.grad((spikes * w).sum(), [x, *params])
    return spikes, grads[0], list(grads[1:])


def compare(factory, shape, dtype_name: str, device) -> tuple[list[str], bool]:
    """One row: the neuron with ``backend="fused"`` against ``backend="reference"``; ``(cells,
    passed)``. On CUDA the dispatcher gives the fused op the Triton kernels; on the CPU, the
    engine that :func:`cmd_correctness` put behind it. ``backend="fused"`` runs the first-use
    check before the first call of each combination, and raises saying why if it fails."""
    import torch

    dtype = getattr(torch, dtype_name)
    T, C = shape[0], shape[2]
    torch.manual_seed(0)  # the random gate init
    m = spread(factory(C, T)).to(device)
    x = current(shape, dtype, seed=1).to(device)
    w = current(shape, dtype, seed=2).to(device)
    m.backend = "reference"
    want = spikes_and_grads(m, x, w)
    m.backend = "fused"
    got = spikes_and_grads(m, x, w)
    same = got[0].dtype == x.dtype and torch.equal(got[0], want[0])
    rate = want[0].float().mean().item()
    x_err, x_ok = grad_error([got[1]], [want[1]], X_RTOL[dtype_name])
    if want[2]:
        p_err, p_ok = grad_error(got[2], want[2], PARAM_RTOL[device.type])
        p_cell = f"{p_err:.1e}"
    else:
        p_ok, p_cell = True, "- (none)"
    problems = []
    if not same:
        n = (got[0] != want[0]).sum().item() if got[0].shape == want[0].shape else "all"
        problems.append(f"{n} spikes differ")
    if not 0.0 < rate < 1.0:
        problems.append("degenerate input: no spike or all spikes")
    if not want[1].abs().sum() > 0:
        problems.append("zero input gradient")
    if not x_ok:
        problems.append("input gradient")
    if not p_ok:
        problems.append("parameter gradients")
    result = "PASS" if not problems else "FAIL: " + ", ".join(problems)
    name = "triton" if device.type == "cuda" else "triton (interpreted)"
    cells = [name, "equal" if same else "DIFFER", f"{rate:.2f}", f"{x_err:.1e}", p_cell, result]
    return cells, not problems


def error_text(e: Exception, limit: int = 600) -> str:
    """An exception on one line, for a table cell."""
    return f"{type(e).__name__}: {' '.join(str(e).split())[:limit]}".replace("|", "/")


def _shape_label(shape) -> str:
    return ("linear " if len(shape) == 3 else "conv ") + "x".join(map(str, shape))


def correctness_shapes(args, device) -> list[tuple[int, ...]]:
    if args.shapes:
        return [tuple(int(d) for d in s.split("x")) for s in args.shapes]
    if device.type == "cuda":
        times = args.times or CUDA_TIMES
        return [(T, *s) for T in times for s in CUDA_SHAPES]
    shapes = [tuple(int(d) for d in s.split("x")) for s in CPU_SHAPES]
    if args.times:
        shapes = [(T, *s[1:]) for T in args.times for s in shapes]
    return shapes


CORRECTNESS_HOW = (
    "{how}. Spikes must be bit-identical; gradients of (spikes * w).sum() with a random w: "
    "'x err' / 'param err' are max |fused - reference| / max |reference| (over the parameter "
    "tensors: the worst), within tolerance when |fused - reference| <= rtol (max |reference| + "
    "|reference|) everywhere; rtol for x: {x_rtol}; for the parameters {param_rtol:g}. 'rate': "
    "the firing rate (a row with none or all spikes proves nothing and fails). A row whose "
    "first-use check fails says so, and why.\n"
)
CORRECTNESS_HEADER = ["neuron", "options", "shape", "dtype", "engine", "spikes", "rate", "x err"]
CORRECTNESS_HEADER += ["param err", "result"]


def cmd_correctness(args, engine=None) -> int:
    """The correctness part; ``engine``: what runs CPU tensors (default: the Triton kernels,
    interpreted), e.g. a deliberately broken one in tests/test_gpu_check.py."""
    import torch

    from lightning_glif.neurons.fused import use_engine

    device = _device(args.device)
    if device.type != "cuda" and engine is None:
        if os.environ.get("TRITON_INTERPRET") != "1":
            sys.exit(
                "correctness on the CPU needs TRITON_INTERPRET=1 before Triton is imported "
                "(main() sets it; call main() before importing torch or lightning_glif)."
            )
        try:
            from lightning_glif.neurons.fused import triton_kernels
        except ImportError as e:
            part = Part("correctness", args.out)
            part.line(f"- skipped: Triton is not importable ({e}); its kernels cannot run here")
            return part.finish("SKIP", f"Triton is not importable ({e})")
        triton_kernels.BLOCK = INTERPRETER_BLOCK  # several programs per channel, masked lanes
        engine = triton_kernels
    cases = neuron_cases()
    unknown = [n for n in args.neurons or [] if n not in cases]
    if unknown:
        sys.exit(f"unknown --neurons {unknown}; the ids: {', '.join(cases)}")
    if args.neurons:
        cases = {n: f for n, f in cases.items() if n in args.neurons}
    dtypes = args.dtypes or list(DTYPES)
    shapes = correctness_shapes(args, device)
    part = Part("correctness", args.out)
    from benchmarks.common import machine_note

    part.line(f"# Triton vs reference loop ({machine_note(device)})\n")
    if device.type == "cuda":
        how = "the neuron with backend='fused' (Triton) vs backend='reference'"
    else:
        how = (
            f"the Triton kernels under TRITON_INTERPRET=1 (block {INTERPRETER_BLOCK}), behind "
            "the dispatcher (use_engine), with backend='fused' vs backend='reference'"
        )
    x_rtol = ", ".join(f"{k} {v:g}" for k, v in X_RTOL.items())
    param_rtol = PARAM_RTOL[device.type]
    part.line(CORRECTNESS_HOW.format(how=how, x_rtol=x_rtol, param_rtol=param_rtol))
    part.header(CORRECTNESS_HEADER)
    failed, total = [], 0
    planned = len(cases) * len(shapes) * len(dtypes)
    rows = [(n, f, s, d) for n, f in cases.items() for s in shapes for d in dtypes]
    # On the CPU, the engine runs CPU tensors (the C kernel otherwise), for all rows at once: a
    # use_engine block checks each combination afresh.
    cpu = use_engine("cpu", engine) if device.type != "cuda" else contextlib.nullcontext()
    with cpu:
        for name, factory, shape, dtype in rows:
            if args.budget and time.perf_counter() - part.start > args.budget:
                break
            total += 1
            label = [name, describe(factory), _shape_label(shape), dtype]
            try:
                cells, passed = compare(factory, shape, dtype, device)
            except Exception as e:  # a kernel that fails its check or does not run
                cells, passed = ["-"] * 5 + [f"FAIL: {error_text(e)}"], False
            part.row(label + [c.replace("|", "/") for c in cells])
            if not passed:
                failed.append(f"{name} {_shape_label(shape)} {dtype}")
    if device.type == "cuda":
        torch.cuda.synchronize()
    if failed:
        more = f"; and {len(failed) - 5} more" if len(failed) > 5 else ""
        shown = "; ".join(failed[:5]) + more
        return part.finish("FAIL", f"{len(failed)} of {total} rows failed: {shown}")
    if total < planned:
        note = f"incomplete: the {args.budget:g} s budget ran out after {total} of {planned} rows"
        return part.finish("FAIL", note + " (all of those passed)")
    note = f"{total} rows ({len(cases)} neurons x {len(shapes)} shapes x {len(dtypes)} dtypes)"
    return part.finish("PASS", note + ": spikes equal, gradients within tolerance")


# ------------------------------------------------------------------------------------- firstuse
def config_neurons() -> dict[str, tuple[Callable, list[str]]]:
    """``label -> (factory(C, T), the configs naming it)``: every neuron that a shipped config
    (``lightning_glif.cli.main.CONF_DIR``) names (a ``neuron:`` entry, dotted keys included), with
    the plain (not nested) values of its ``init_args``."""
    import yaml

    found: dict[str, tuple[Callable, list[str]]] = {}

    def visit(node, config: str) -> None:
        if isinstance(node, list):
            node = dict(enumerate(node))
        if not isinstance(node, dict):
            return
        for key, value in node.items():
            spec = {"class_path": value} if isinstance(value, str) else value
            named = str(key).rsplit(".", 1)[-1] == "neuron"
            if named and isinstance(spec, dict) and "class_path" in spec:
                module, _, name = spec["class_path"].rpartition(".")
                args = spec.get("init_args") or {}
                options = {k: v for k, v in args.items() if not isinstance(v, dict | list)}
                label = f"{name}({', '.join(f'{k}={v!r}' for k, v in options.items())})"
                cls = getattr(importlib.import_module(module), name)
                found.setdefault(label, (partial(cls, **options), []))[1].append(config)
            visit(value, config)

    from lightning_glif.cli.main import CONF_DIR

    for path in sorted(CONF_DIR.rglob("*.yaml")):
        visit(yaml.safe_load(path.read_text()), str(path.relative_to(CONF_DIR)))
    return found


def cmd_firstuse(args) -> int:
    import torch

    from benchmarks.common import machine_note
    from lightning_glif.neurons.fused import first_use_results, fused_available

    device = _device(args.device)
    part = Part("firstuse", args.out)
    part.line(f"# First-use check of the fused kernels ({machine_note(device)})\n")
    part.line(
        "Each neuron a config in conf/ names, as the config builds it, on the inputs below in "
        "float32, bfloat16 and float16 (what 32-true, bf16-mixed and 16-mixed hand a neuron): one "
        "forward and backward with backend='auto', as training runs it. The first call of each "
        "new combination runs the fused engine once on a small random input against the "
        "reference loop (spikes equal, input and coefficient gradients within tolerance); a "
        "combination that fails runs the reference loop from then on. 'runs': what "
        "backend='auto' runs for the neuron afterwards.\n"
    )
    part.header(["neuron", "configs", "input", "dtype", "runs", "result"])
    failed, rows = [], 0
    batch = 1 if device.type == "cuda" else 4  # a quarter of the batch on the CPU
    for label, (factory, configs) in config_neurons().items():
        names = ", ".join(configs[:3]) + (
            f" and {len(configs) - 3} more" if len(configs) > 3 else ""
        )
        for kind, shape in FIRSTUSE_SHAPES.items():
            shape = (shape[0], shape[1] // batch, *shape[2:])
            for dtype in DTYPES:
                rows += 1
                torch.manual_seed(0)
                x = current(shape, getattr(torch, dtype), seed=1).to(device).requires_grad_()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # a failed check's warning: in the row
                    try:
                        m = factory(shape[2], shape[0]).to(device)
                        m(x).sum().backward()
                        c = m.coefficients()
                        why = fused_available(x.detach(), c, m.surrogate, m.detach_reset)
                    except Exception as e:
                        why = error_text(e)
                runs = "fused" if why is None else "reference loop"
                result = "PASS" if why is None else f"FAIL: {why}"
                part.row([label, names, _shape_label(shape), dtype, runs, result.replace("|", "/")])
                if why is not None:
                    failed.append(f"{label} {kind} {dtype}")
    part.line("\nEvery combination checked in this process, and its verdict:\n")
    part.header(["combination", "verdict"])
    results = first_use_results()
    for combination, why in results.items():
        part.row([combination, "PASS" if not why else f"FAIL: {why}".replace("|", "/")])
    if failed:
        return part.finish("FAIL", f"{len(failed)} of {rows} runs not fused: {'; '.join(failed)}")
    note = f"{rows} runs fused, {len(results)} combinations checked, all passed"
    return part.finish("PASS", note)


# ---------------------------------------------------------------------------------------- speed
def spikingjelly_accelerated(device) -> tuple[dict, dict[str, str]]:
    """SpikingJelly's ``GatedLIFNode`` and ``LIFNode`` on their accelerated backends (cupy; also
    triton where the installed version has it), for the CUDA speed table: ``(makers, why
    not)``. ``benchmarks/baselines.py`` has them on the torch backend (their default)."""
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from spikingjelly.activation_based import neuron
    except ImportError:
        return {}, {}  # contenders() already says that SpikingJelly is missing
    if device.type != "cuda":
        return {}, {
            "SpikingJelly cupy/triton backends": "CUDA only; SpikingJelly runs its "
            "torch backend here"
        }
    builds = {
        "GatedLIFNode": lambda C, T, **kw: neuron.GatedLIFNode(T=T, inplane=C, **kw),
        "LIFNode": lambda C, T, **kw: neuron.LIFNode(step_mode="m", **kw),
    }
    makers, missing = {}, {}
    for label, build in builds.items():
        supported = tuple(getattr(build(4, 2), "supported_backends", ("torch",)))
        for backend in ("cupy", "triton"):
            name = f"SpikingJelly {label} ({backend})"
            if backend not in supported:
                missing[name] = f"{label} has no {backend} backend (it supports {supported})"
                continue
            try:
                __import__(backend)
            except Exception as e:  # cupy raises more than ImportError without a usable CUDA
                hint = ": pip install cupy-cuda12x" if backend == "cupy" else ""
                missing[name] = f"{backend} is not importable ({e}){hint}"
                continue

            def make(C, T, device, build=build, backend=backend):
                m = build(C, T, backend=backend).to(device)

                def run(x):
                    m.reset()
                    return m(x)

                return run

            makers[name] = make
    return makers, missing


def cmd_speed(args) -> int:
    import torch

    from benchmarks import neuron_speed
    from benchmarks.baselines import contenders
    from benchmarks.common import machine_note

    device = _device(args.device)
    cuda = device.type == "cuda"
    batch = args.batch or (64 if cuda else 1)
    rounds = args.rounds or (7 if cuda else 3)
    if args.shapes:
        shapes = [tuple(int(d) for d in s.split("x")) for s in args.shapes]
    else:
        shapes = [(6, batch, *layer) for layer in PAPER_LAYERS]
    part = Part("speed", args.out)
    part.line(
        f"# Neuron forward+backward at the ResNet-19 CIFAR layer sizes ({machine_note(device)})\n"
    )
    makers, missing = contenders()
    extra, extra_missing = spikingjelly_accelerated(device)
    makers.update(extra)
    for name, why in {**missing, **extra_missing}.items():
        part.line(f"- skipped {name}: {why}")
    baseline = (
        neuron_speed.BASELINE if neuron_speed.BASELINE in makers else "GLIF reference loop (ours)"
    )
    ran = 0
    for shape in shapes:
        times, saved, failed = neuron_speed.bench_shape(shape, makers, rounds, device)
        part.line(f"\n## x = {list(shape)} float32, median of {rounds} interleaved rounds\n")
        for name, why in failed.items():
            part.line(f"- {name} cannot run this shape: {why}")
        base = baseline if baseline in times else "GLIF reference loop (ours)"
        table, med = neuron_speed.report(shape, times, saved, base)
        part.line(table)
        fused = neuron_speed.FUSED
        goals = {
            "SpikingJelly GatedLIFNode": 0.25,
            "SpikingJelly LIFNode": 0.5,
            "copy roofline": 3.0,
        }
        ratios = []
        for name in med:
            if name == "GLIF reference loop (ours)":
                ratios.append(f"fused GLIF / {name} = {med[fused] / med[name]:.3f}")
            elif name.startswith("SpikingJelly") or name in goals:
                goal = next((g for k, g in goals.items() if name.startswith(k)), None)
                met = (
                    ""
                    if goal is None
                    else f", goal <= {goal}: "
                    + ("met" if med[fused] / med[name] <= goal else "NOT met")
                )
                ratios.append(f"fused GLIF / {name} = {med[fused] / med[name]:.3f}{met}")
        part.line("\n" + "; ".join(ratios))
        ran += fused in med
        del times, saved
        if cuda:
            torch.cuda.empty_cache()
    if ran != len(shapes):
        return part.finish("FAIL", "the fused GLIF did not run at every shape")
    note = f"{len(shapes)} shapes timed; {len(missing) + len(extra_missing)} contenders skipped"
    return part.finish("PASS", note + " (a measurement: the goals above are not pass criteria)")


# ------------------------------------------------------------------------------------- resnet19
def cmd_resnet19(args) -> int:
    from benchmarks import resnet19_step
    from benchmarks.common import machine_note

    device = _device(args.device)
    cuda = device.type == "cuda"
    batch = args.batch or (64 if cuda else 2)
    steps = args.steps or (4 if cuda else 1)
    part = Part("resnet19", args.out)
    part.line(
        f"# ResNet-19 training step, T={args.time_steps}, batch {batch}, 3x32x32, SGD "
        f"({machine_note(device)})\n"
    )
    part.line(
        f"Each neuron backend in its own process, the net built and timed by "
        f"benchmarks/resnet19_step.py (--child --backend fused / reference): one "
        f"warm-up step, then the median of {steps} timed steps; peak memory: "
        + (
            "torch.cuda.max_memory_allocated over the warm-up and timed steps."
            if cuda
            else "growth of the peak RSS (CPU)."
        )
        + "\n"
    )
    results, errors = {}, {}
    for backend in ("fused", "reference"):
        cmd = [
            sys.executable, resnet19_step.__file__, "--child",
            "--backend", backend,
            "--batch", str(batch),
            "--time-steps", str(args.time_steps),
            "--steps", str(steps),
            "--device", args.device,
        ]  # fmt: skip
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        try:
            results[backend] = json.loads(done.stdout.strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError):
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            errors[backend] = f"exit {done.returncode}: " + " / ".join(tail)
    peak = "peak MB (max_memory_allocated)" if cuda else "peak RSS growth MB"
    # What the child reports besides step_s and peak_mb (resnet19_step.py may add figures).
    extra = {
        "saved_mb": ("saved for backward MB", 0),
        "distinct_mb": ("distinct saved MB", 0),
        "neurons_s": ("of which neurons s", 4),
        "first_s": ("first step s", 2),
    }
    extra = {k: v for k, v in extra.items() if any(k in r for r in results.values())}
    labels = [label for label, _ in extra.values()]
    part.header(["neuron", "step s", "images/s", "speed-up vs reference", peak, *labels])
    for backend, r in results.items():
        ref = results.get("reference", {}).get("step_s")
        cells = [
            f"{r[k]:.{digits}f}" if isinstance(r.get(k), float) and math.isfinite(r[k]) else "-"
            for k, (_, digits) in extra.items()
        ]
        speedup = f"{ref / r['step_s']:.2f}" if ref else "-"
        step, rate = f"{r['step_s']:.4f}", f"{batch / r['step_s']:.1f}"
        part.row([f"GLIF {backend}", step, rate, speedup, f"{r['peak_mb']:.0f}", *cells])
    for backend, why in errors.items():
        part.row([f"GLIF {backend}", "-", "-", "-", f"FAILED: {why}", *("-" for _ in extra)])
    if errors:
        return part.finish("FAIL", "; ".join(f"{b}: {w}" for b, w in errors.items()))
    fused, ref = results["fused"], results["reference"]
    note = (
        f"fused / reference: step time {fused['step_s'] / ref['step_s']:.3f} (a speed-up of "
        f"{ref['step_s'] / fused['step_s']:.2f}; resnet19_step.py's goal: >= 1.5), peak "
        f"memory {fused['peak_mb'] / ref['peak_mb']:.3f}"
    )
    part.line(f"\n{note}")
    return part.finish("PASS", note + " (a measurement)")


# ------------------------------------------------------------------------------------ precision
def precision_run(precision: str, args, device, runs: Path) -> dict:
    """One epoch of ``train.py fit`` on random CIFAR-10-shaped images; its figures."""
    import torch
    from pytorch_lightning import Callback

    from lightning_glif.cli.main import cli_main
    from lightning_glif.neurons import MembraneNeuron
    from lightning_glif.neurons.fused import fused_available

    seen: dict[str, int] = {}

    class NeuronInputs(Callback):
        """At the first training batch: each neuron's input dtype and what runs it."""

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if batch_idx == 0 and not seen:
                self.hooks = [
                    m.register_forward_pre_hook(self.record)
                    for m in pl_module.modules()
                    if isinstance(m, MembraneNeuron)
                ]

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            for hook in getattr(self, "hooks", []):
                hook.remove()
            self.hooks = []

        @staticmethod
        def record(module, inputs) -> None:
            x = inputs[0]
            with torch.no_grad(), torch.autocast(x.device.type, enabled=False):
                c = module.coefficients()
                why = fused_available(x, c, module.surrogate, module.detach_reset)
            fused = module.backend != "reference" and why is None
            what = f"fused ({x.device.type})" if fused else "reference loop"
            key = f"{str(x.dtype).removeprefix('torch.')} -> {what}"
            seen[key] = seen.get(key, 0) + 1

    cli_args = [
        "fit", "--config", PRECISION_CONFIG,
        "--data", "benchmarks.random_cifar.RandomCIFAR10",
        "--data.init_args.samples", str(args.samples),
        "--data.init_args.val_size", str(args.val),
        "--data.init_args.batch_size", str(args.batch),
        "--data.init_args.num_workers", str(args.num_workers),
        "--trainer.max_epochs", "1",
        "--trainer.precision", precision,
        "--trainer.accelerator", "gpu" if device.type == "cuda" else "cpu",
        "--trainer.devices", "1",
        "--trainer.default_root_dir", str(runs),
        "--trainer.logger.init_args.name", f"precision_{precision}",
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
    ]  # fmt: skip
    if args.backbone == "convnet":  # a small net for the CPU
        cli_args += ["--model.backbone", "lightning_glif.models.convnet.SpikingConvNet"]
        cli_args += ["--model.backbone.init_args.channels", "[8, 16]"]
    if args.time_steps:
        cli_args += ["--model.backbone.init_args.time_steps", str(args.time_steps)]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    cli = cli_main(cli_args, callbacks=[NeuronInputs()])
    wall = time.perf_counter() - start
    trainer = cli.trainer
    neuron = next(m for m in cli.model.modules() if isinstance(m, MembraneNeuron))
    scaler = getattr(trainer.precision_plugin, "scaler", None)
    return {
        "wall_s": wall,
        "metrics": {k: float(v) for k, v in trainer.callback_metrics.items()},
        "batches": trainer.fit_loop.epoch_loop.batch_progress.total.completed,
        "steps": trainer.global_step,
        "expected_steps": (args.samples - args.val) // args.batch,
        "epochs": trainer.current_epoch,
        "precision": str(trainer.precision),
        "backbone": type(cli.model.backbone).__name__,
        "time_steps": neuron.time_steps,
        "neurons": seen,
        "grad_scale": float(scaler.get_scale()) if scaler is not None else None,
        "peak_mb": torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None,
    }


PRECISION_HEADER = ["precision", "backbone", "wall s", "batches (optimizer steps)", "train loss"]
PRECISION_HEADER += ["val loss", "train acc", "val acc", "losses finite", "neuron inputs"]
PRECISION_HEADER += ["grad scale", "peak MB", "result"]


def cmd_precision(args) -> int:
    device = _device(args.device)
    cuda = device.type == "cuda"
    precisions = args.precisions or ["16-mixed", "bf16-mixed"]
    args.backbone = args.backbone or ("resnet19" if cuda else "convnet")
    args.samples = args.samples or (512 if cuda else 160)
    args.val = args.val or (128 if cuda else 32)
    args.batch = args.batch or (64 if cuda else 32)
    args.num_workers = args.num_workers if args.num_workers is not None else (4 if cuda else 0)
    if args.time_steps is None and not cuda:
        args.time_steps = 2
    part = Part("precision", args.out)
    from benchmarks.common import machine_note

    part.line(f"# One epoch of train.py fit under mixed precision ({machine_note(device)})\n")
    if args.backbone == "resnet19":
        net = "ResNet-19 as configured"
    else:
        net = "a small SpikingConvNet (channels [8, 16]) in place of its ResNet-19"
    steps = f", T={args.time_steps}" if args.time_steps else ""
    part.line(
        f"`cli_main(['fit', '--config', '{PRECISION_CONFIG}', ...])`, {net}{steps}, on random "
        f"images of CIFAR-10's shapes (benchmarks/random_cifar.py): {args.samples} standard-normal "
        f"3x32x32 images ({args.val} held out for validation), random labels of 10 classes "
        "(accuracy is chance level: this checks the precision plumbing, not learning), batch "
        f"{args.batch}, 1 epoch.\n"
    )
    part.header(PRECISION_HEADER)
    failed, ran = [], 0
    with tempfile.TemporaryDirectory(prefix="gpu_check_precision_") as tmp:
        for precision in precisions:
            if precision == "16-mixed" and not cuda:
                why = "16-mixed (float16 autocast with a gradient scaler) is CUDA-only in Lightning"
                part.row([precision, *["-"] * 11, f"SKIP: {why}; it runs on a GPU"])
                continue
            try:
                r = precision_run(precision, args, device, Path(tmp) / "runs")
            except Exception as e:  # e.g. NonFiniteLossError from the guard
                part.row([precision, *["-"] * 11, f"FAIL: {error_text(e)}"])
                failed.append(precision)
                continue
            ran += 1
            m = r["metrics"]
            losses = [m.get("train/loss", math.nan), m.get("val/loss", math.nan)]
            finite = all(math.isfinite(v) for v in losses)
            problems = []
            if not finite:
                problems.append("non-finite loss")
            if r["epochs"] != 1 or r["batches"] != r["expected_steps"]:
                batches = f"{r['batches']} of {r['expected_steps']} training batches"
                problems.append(f"{batches}, {r['epochs']} epochs")
            if r["precision"] != precision:
                problems.append(f"trainer precision {r['precision']}")
            if problems:
                failed.append(precision)
            neurons = ", ".join(f"{k} ({n} neurons)" for k, n in r["neurons"].items())
            part.row([
                precision,
                f"{r['backbone']} T={r['time_steps']}",
                f"{r['wall_s']:.1f}",
                f"{r['batches']} ({r['steps']})",
                f"{losses[0]:.4f}",
                f"{losses[1]:.4f}",
                f"{m.get('train/acc', math.nan):.3f}",
                f"{m.get('val/acc', math.nan):.3f}",
                "yes" if finite else "NO",
                neurons or "-",
                "-" if r["grad_scale"] is None else f"{r['grad_scale']:g}",
                "-" if r["peak_mb"] is None else f"{r['peak_mb']:.0f}",
                "PASS" if not problems else "FAIL: " + "; ".join(problems),
            ])  # fmt: skip
    if failed:
        return part.finish("FAIL", f"failed: {', '.join(failed)}")
    note = f"{ran} run(s) finished with finite losses"
    if "16-mixed" in precisions and not cuda:
        note += "; 16-mixed skipped: CUDA-only"
    return part.finish("PASS", note)


# -------------------------------------------------------------------------------------- summary
def machine(device_name: str) -> dict[str, str]:
    """What the tables were measured with: the card (or CPU), torch, CUDA, Triton, the commit."""
    import torch

    if device_name.startswith("cuda") and torch.cuda.is_available():
        card = (
            f"{torch.cuda.get_device_name(torch.device(device_name))} (torch.cuda.get_device_name)"
        )
    elif device_name.startswith("cuda"):
        card = "no CUDA device visible"
    else:
        card = f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores"
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    return {
        "card": card,
        "torch": f"{torch.__version__} (CUDA {torch.version.cuda})",
        "triton": triton_version,
        "commit": commit or "unknown (not a git checkout)",
    }


def cmd_summary(args) -> int:
    out: Path = args.out
    codes = dict(item.split("=", 1) for item in args.rc or [])
    rows = ["| check | result | s | note |", "|---|---|---|---|"]
    failed = []
    parts = args.parts or PARTS
    for name in parts:
        path = out / f"{name}.json"
        rc = codes.get(name)
        if path.is_file():
            r = json.loads(path.read_text())
            status, note, seconds = r["status"], r["note"], f"{r['seconds']:.0f}"
            if rc not in (None, "0") and status != "FAIL":
                status, note = "FAIL", f"exit code {rc} after writing its result: {note}"
        else:
            why = {"124": "timed out", "137": "killed after its timeout"}.get(rc or "", "crashed")
            status, seconds = "FAIL", "-"
            note = f"no result: {why} (exit code {rc}); see {name}.log and {name}.md"
        if status == "FAIL":
            failed.append(name)
        rows.append(f"| {name} | {status} | {seconds} | {note.replace('|', '/')} |")
    verdict = "FAIL: " + ", ".join(failed) if failed else "PASS"
    summary = "\n".join(rows) + f"\n\n**overall: {verdict}**\n"
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.md").write_text("# GPU check summary\n\n" + summary)
    print("# GPU check summary\n\n" + summary, end="")
    # gpu.md: one section for docs/performance.md, every part's headings two levels down.
    info = machine(args.device)
    date = datetime.datetime.now(datetime.UTC).date().isoformat()
    took = f", {args.seconds} s in all" if args.seconds is not None else ""
    lines = [
        f"## GPU check, {date}: {info['card'].split(' (')[0]}\n",
        f"`bash benchmarks/gpu_check.sh OUT` on commit {info['commit']}{took}: {info['card']}; "
        f"torch {info['torch']}, Triton {info['triton']}.\n",
        "### Summary\n",
        summary,
    ]
    for name in parts:
        path = out / f"{name}.md"
        text = path.read_text() if path.is_file() else f"# {name}\n\n(no table: see {name}.log)\n"
        lines += ["##" + line if line.startswith("#") else line for line in text.splitlines()]
        lines.append("")
    (out / "gpu.md").write_text("\n".join(lines))
    return 1 if failed else 0


# ----------------------------------------------------------------------------------------- main
def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0].replace("\n", " "),
        epilog="Every part on CUDA, in under 8 minutes on one H100: benchmarks/gpu_check.sh OUT",
    )
    sub = p.add_subparsers(dest="part", required=True)

    def part(name: str, help: str) -> argparse.ArgumentParser:
        s = sub.add_parser(name, help=help, description=help)
        s.add_argument("--device", default="cuda", help="cuda (default) or cpu")
        s.add_argument("--out", type=Path, help="folder for <part>.md and <part>.json")
        return s

    sub.add_parser("cuda", help="exit 1 with a message unless PyTorch sees a CUDA device")
    part("firstuse", "the fused kernels' first-use check for the neurons the configs use")
    s = part("correctness", "Triton vs the reference loop, every neuron, dtype and shape kind")
    s.add_argument("--neurons", nargs="+", help="case ids (default: all)")
    s.add_argument("--dtypes", nargs="+", choices=DTYPES, help="default: all three")
    s.add_argument("--times", nargs="+", type=int, help="T values (CUDA default: 2 6 16)")
    s.add_argument("--shapes", nargs="+", help="TxBxC or TxBxCxHxW, replacing the defaults")
    s.add_argument(
        "--budget", type=float, help="seconds: start no row after this; incomplete fails"
    )
    s = part("speed", "neuron forward+backward at the ResNet-19 CIFAR layer sizes")
    s.add_argument("--batch", type=int, help="B of the layer shapes (CUDA 64, CPU 1)")
    s.add_argument("--rounds", type=int, help="timed rounds (CUDA 7, CPU 3)")
    s.add_argument("--shapes", nargs="+", help="TxBxCxHxW, replacing the layer shapes")
    s = part("resnet19", "ResNet-19 training step time and peak memory, fused vs reference")
    s.add_argument("--batch", type=int, help="CUDA 64, CPU 2")
    s.add_argument("--time-steps", type=int, default=6)
    s.add_argument("--steps", type=int, help="timed steps per backend (CUDA 4, CPU 1)")
    s = part("precision", "one epoch of train.py fit on random images, 16-mixed and bf16-mixed")
    precisions = ["16-mixed", "bf16-mixed", "32-true"]
    s.add_argument("--precisions", nargs="+", choices=precisions, help="16-mixed bf16-mixed")
    s.add_argument("--samples", type=int, help="images, --val included (CUDA 512, CPU 160)")
    s.add_argument("--val", type=int, help="of them held out for validation (CUDA 128, CPU 32)")
    s.add_argument("--batch", type=int, help="CUDA 64 (the paper's), CPU 32")
    backbones = ["resnet19", "convnet"]
    s.add_argument("--backbone", choices=backbones, help="CUDA resnet19 (configured), CPU convnet")
    s.add_argument("--time-steps", type=int, help="T (default: the config's 6; CPU: 2)")
    s.add_argument("--num-workers", type=int, help="DataLoader workers (CUDA 4, CPU 0)")
    s = sub.add_parser("summary", help="OUT/summary.md and OUT/gpu.md from the parts' results")
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--parts", nargs="+", choices=PARTS)
    s.add_argument("--rc", nargs="*", metavar="PART=CODE", help="the parts' exit codes")
    s.add_argument("--device", default="cuda", help="the device the parts ran on (for gpu.md)")
    s.add_argument("--seconds", type=int, help="the whole check's wall time (for gpu.md)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.part == "correctness" and args.device == "cpu":
        # The interpreter only applies if set before Triton is first imported (Lightning imports
        # it, and torch with dynamo): so before anything else.
        if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
            sys.exit(
                "Triton was imported before TRITON_INTERPRET=1 could be set: run the CPU "
                "correctness check in a fresh process (python benchmarks/gpu_check.py)."
            )
        os.environ["TRITON_INTERPRET"] = "1"
    commands = {
        "cuda": cmd_cuda,
        "firstuse": cmd_firstuse,
        "correctness": cmd_correctness,
        "speed": cmd_speed,
        "resnet19": cmd_resnet19,
        "precision": cmd_precision,
        "summary": cmd_summary,
    }
    return commands[args.part](args)


if __name__ == "__main__":
    sys.exit(main())
