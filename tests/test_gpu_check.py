"""The GPU check (benchmarks/gpu_check.sh, benchmarks/gpu_check.py), its CPU-runnable parts for
real: the first-use check of the C kernel for the configs' neurons, the Triton kernels under
``TRITON_INTERPRET=1`` against the reference loop (and broken engines caught), one bf16-mixed
epoch of ``train.py fit`` on random CIFAR-shaped images, and the shell script's own logic (its
CUDA probe, a dry run of parts on the CPU, the summary and ``gpu.md``).

Each command runs in a child process: the interpreter only applies when ``TRITON_INTERPRET=1`` is
set before Triton is first imported (Lightning imports it), as in tests/test_fused.py.
"""

from __future__ import annotations

import ast
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
SHELL = ROOT / "benchmarks" / "gpu_check.sh"
sys.path.insert(0, str(ROOT))

from benchmarks import gpu_check  # noqa: E402

NEURONS = ["glif-soft", "glif-static_hard", "glif-layer", "gliff", "lif-soft", "plif-channel-soft"]
DTYPES = ["float32", "bfloat16", "float16"]
SHAPES = ["linear 2x3x4", "conv 4x2x3x3x3"]  # gpu_check.CPU_SHAPES


def table(path: Path, first: str) -> list[list[str]]:
    """The rows of the markdown table whose header starts with ``| first |``, as cells."""
    rows, inside = [], False
    for line in path.read_text().splitlines():
        if line.startswith(f"| {first} |"):
            inside = True
            continue
        if inside and line.startswith("|---"):
            continue
        if inside and line.startswith("| "):
            rows.append([c.strip() for c in line.strip().strip("|").split("|")])
        elif inside:
            break
    return rows


def run(args: list[str], env: dict | None = None, timeout: int = 120):
    env = {**os.environ, **(env or {})}
    return subprocess.run(args, cwd=ROOT, env=env, text=True, capture_output=True, timeout=timeout)


def result(out: Path, part: str) -> dict:
    return json.loads((out / f"{part}.json").read_text())


def test_every_exported_neuron_has_cases():
    from lightning_glif import neurons
    from lightning_glif.neurons.glif import GATE_MODES

    cases = gpu_check.neuron_cases()
    classes = {getattr(f, "func", f) for f in cases.values()}
    exported = {getattr(neurons, n) for n in neurons.__all__}
    membrane = {
        c for c in exported if isinstance(c, type) and issubclass(c, neurons.MembraneNeuron)
    }
    assert membrane - {neurons.MembraneNeuron} <= classes
    assert {"GLIF", "GLIFf", "LIF", "PLIF"} <= {c.__name__ for c in membrane}
    assert {f"glif-{m}" for m in GATE_MODES} <= set(cases)
    # every fused surrogate kernel and both reset paths of the backward
    options = [getattr(f, "keywords", {}) for f in cases.values()]
    surrogates = [o["surrogate"] for o in options if "surrogate" in o]
    assert {s.kernel_code()[0] for s in surrogates} == {1, 2, 3}  # 0: the default, elsewhere
    assert any(o.get("detach_reset") for o in options)


def test_config_neurons_are_what_the_configs_name():
    found = gpu_check.config_neurons()
    # conf/default.yaml and the overlays of conf/neuron/, and the CIFAR10-DVS experiment's GLIF
    # with the authors' initial values
    assert {"GLIF()", "GLIFf()", "LIF()", "PLIF()"} <= set(found)
    assert "default.yaml" in found["GLIF()"][1] and found["LIF()"][1] == ["neuron/lif.yaml"]
    dvs = [label for label, (_, configs) in found.items()
           if "experiment/cifar10dvs_widenet7b_t16.yaml" in configs]  # fmt: skip
    assert dvs == ["GLIF(tau=0.5, v_threshold=0.99999, conductance=0.9, v_leak=0.03125, "
                   "v_reset=0.99999)"]  # fmt: skip
    factory = found[dvs[0]][0]
    assert factory(4, 2).observables()["tau"].value.tolist() == pytest.approx([0.5] * 4)


@pytest.mark.slow
def test_firstuse_part_checks_the_c_kernel_for_every_config_neuron(tmp_path):
    done = run([sys.executable, str(SCRIPT), "firstuse", "--device", "cpu", "--out", str(tmp_path)])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = table(tmp_path / "firstuse.md", "neuron")
    neurons = {r[0] for r in rows}
    assert {"GLIF()", "GLIFf()", "LIF()", "PLIF()"} <= neurons
    assert len(rows) == len(neurons) * 2 * 3  # conv and linear, three dtypes
    assert all(r[4] == "fused" and r[5] == "PASS" for r in rows), rows
    checked = table(tmp_path / "firstuse.md", "combination")
    assert checked and all(r[0].startswith("engine cpu on cpu") and r[1] == "PASS" for r in checked)
    # one combination per input dtype, rank and coefficient layout: float32 compute everywhere
    inputs = {re.search(r"input (\w+) \[T, B, C(, \.\.\.)?\]", r[0]).groups() for r in checked}
    assert inputs == {(d, rank) for d in DTYPES for rank in (None, ", ...")}
    assert result(tmp_path, "firstuse")["status"] == "PASS"


@pytest.mark.slow
def test_interpreted_triton_correctness_table_passes(tmp_path):
    pytest.importorskip("triton")
    args = ["correctness", "--device", "cpu", "--out", str(tmp_path), "--neurons", *NEURONS]
    done = run([sys.executable, str(SCRIPT), *args], timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = table(tmp_path / "correctness.md", "neuron")
    want = sorted((n, s, d) for n in NEURONS for s in SHAPES for d in DTYPES)
    assert sorted((r[0], r[2], r[3]) for r in rows) == want
    assert all(r[4] == "triton (interpreted)" and r[5] == "equal" and r[-1] == "PASS" for r in rows)
    assert all(0 < float(r[6]) < 1 for r in rows)
    assert [r[8] for r in rows if r[0] == "lif-soft"] == ["- (none)"] * 6  # LIF learns nothing
    assert result(tmp_path, "correctness")["status"] == "PASS"


# Three broken engines (the Triton kernels with one output spoilt), each put behind the dispatcher
# by the correctness part, in one child process.
BREAK = """
import sys
from pathlib import Path
from types import SimpleNamespace
from benchmarks import gpu_check
from lightning_glif.neurons.fused import triton_kernels as tk

def flipped_spike(*args):
    out = tk.forward(*args)
    out.view(-1)[0] = 1 - out.view(-1)[0]
    return out

def wrong_input_gradient(*args):
    gx, gc, gg = tk.backward(*args)
    return gx * 1.05, gc, gg

def wrong_parameter_gradient(*args):
    gx, gc, gg = tk.backward(*args)
    return gx, gc * 1.05, gg * 1.05

codes = {}
for name, kernels in [("flipped_spike", dict(forward=flipped_spike)),
                      ("wrong_input_gradient", dict(backward=wrong_input_gradient)),
                      ("wrong_parameter_gradient", dict(backward=wrong_parameter_gradient))]:
    engine = SimpleNamespace(NAME=name, COMPUTE_DTYPES=tk.COMPUTE_DTYPES,
                             READS_HALF_PRECISION=tk.READS_HALF_PRECISION,
                             **{"forward": tk.forward, "backward": tk.backward, **kernels})
    out = Path(sys.argv[1]) / name
    args = gpu_check.parser().parse_args(
        ["correctness", "--device", "cpu", "--out", str(out), "--neurons", "glif-soft",
         "--dtypes", "float32", "bfloat16"])
    codes[name] = gpu_check.cmd_correctness(args, engine=engine)
print("CODES", codes)
"""


@pytest.mark.slow
def test_a_broken_triton_engine_fails_the_check(tmp_path):
    pytest.importorskip("triton")
    done = run([sys.executable, "-c", BREAK, str(tmp_path)], env={"TRITON_INTERPRET": "1"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    codes = ast.literal_eval(done.stdout.split("CODES", 1)[1].strip())
    assert codes == {"flipped_spike": 1, "wrong_input_gradient": 1, "wrong_parameter_gradient": 1}
    # each row fails at its combination's first-use check, saying why
    why = {"flipped_spike": r"1 of \d+ spikes differ",
           "wrong_input_gradient": "the input gradient differs",
           "wrong_parameter_gradient": "the gradient of decay differs"}  # fmt: skip
    for name, reason in why.items():
        rows = table(tmp_path / name / "correctness.md", "neuron")
        assert len(rows) == 4
        for r in rows:
            assert r[-1].startswith("FAIL: RuntimeError: backend='fused' cannot run this call")
            assert f"engine {name} on cpu" in r[-1] and re.search(reason, r[-1]), r[-1]
        assert result(tmp_path / name, "correctness")["status"] == "FAIL"


@pytest.mark.slow
def test_shell_dry_run_on_cpu_speed_and_bf16_precision(tmp_path):
    # The script's loop, tee, summary and gpu.md, with the CPU versions of two parts; the
    # precision part is one bf16-mixed epoch of train.py fit on random images (16-mixed:
    # CUDA-only).
    out = tmp_path / "out"
    env = {
        "GPU_CHECK_DEVICE": "cpu",
        "GPU_CHECK_PARTS": "speed precision",
        "PYTHON": sys.executable,
    }
    done = run(["bash", str(SHELL), str(out)], env=env, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = (out / "summary.md").read_text()
    assert "| speed | PASS |" in summary and "| precision | PASS |" in summary
    assert "**overall: PASS**" in summary
    rows = {r[0]: r for r in table(out / "precision.md", "precision")}
    assert rows["16-mixed"][-1].startswith("SKIP") and "CUDA-only" in rows["16-mixed"][-1]
    bf16 = rows["bf16-mixed"]
    assert bf16[-1] == "PASS" and bf16[8] == "yes"
    assert math.isfinite(float(bf16[4])) and math.isfinite(float(bf16[5]))
    assert bf16[3] == "4 (4)"  # the whole epoch ran: (160 - 32) // 32 batches
    assert re.fullmatch(r"(bfloat16|float32) -> fused \(cpu\) \(2 neurons\)", bf16[9])
    assert "GLIF fused (ours)" in (out / "speed.md").read_text()
    assert (out / "precision.log").is_file() and (out / "speed.log").is_file()
    # gpu.md: the machine, the summary, then each part's table, headings two levels down
    gpu = (out / "gpu.md").read_text()
    assert re.match(r"## GPU check, \d{4}-\d\d-\d\d: .* CPU, \d+ cores\n", gpu)
    assert "torch 2." in gpu and "Triton " in gpu and "s in all" in gpu
    headings = [line for line in gpu.splitlines() if line.startswith("#")]
    assert headings[1] == "### Summary" and all(h.startswith("##") for h in headings)
    assert [h.split(" (")[0] for h in headings if h.startswith("### ")][1:] == [
        "### Neuron forward+backward at the ResNet-19 CIFAR layer sizes",
        "### One epoch of train.py fit under mixed precision",
    ]
    assert summary.split("\n\n", 1)[1] in gpu and "| bf16-mixed |" in gpu


@pytest.mark.slow
def test_shell_without_cuda_says_so(tmp_path):
    out = tmp_path / "new" / "out"
    env = {"CUDA_VISIBLE_DEVICES": "", "PYTHON": sys.executable}
    done = run(["bash", str(SHELL), str(out)], env=env, timeout=60)
    assert done.returncode == 3, done.stdout + done.stderr
    assert "no CUDA" in done.stderr and "needs an NVIDIA GPU" in done.stderr
    assert "**overall: FAIL: cuda**" in (out / "summary.md").read_text()
    usage = run(["bash", str(SHELL)], timeout=60)
    assert usage.returncode == 2 and "usage:" in usage.stderr


def test_shell_timeouts_fit_in_eight_minutes():
    # The parts' timeouts, their kill grace and the CUDA probe's add up to under 480 s.
    text = SHELL.read_text()
    budget = dict(re.findall(r"\[(\w+)\]=(\d+)", text.split("declare -A budget=(", 1)[1]))
    assert set(budget) == set(gpu_check.PARTS)
    grace = int(re.search(r"timeout --kill-after=(\d+) \"\$seconds\"", text).group(1))
    probe = sum(map(int, re.search(r"timeout --kill-after=(\d+) (\d+) ", text).groups()))
    assert sum(int(s) + grace for s in budget.values()) + probe < 480


def test_summary_fails_a_part_that_left_no_result(tmp_path, capsys):
    ok = {"part": "speed", "status": "PASS", "note": "timed", "seconds": 3.0}
    (tmp_path / "speed.json").write_text(json.dumps(ok))
    (tmp_path / "speed.md").write_text("# Speed table\n\n| a |\n|---|\n| 1 |\n")
    skipped = {"part": "precision", "status": "SKIP", "note": "n/a", "seconds": 1.0}
    (tmp_path / "precision.json").write_text(json.dumps(skipped))
    args = ["summary", "--out", str(tmp_path), "--device", "cpu", "--rc", "speed=0"]
    args += ["precision=0", "correctness=124"]
    assert gpu_check.main([*args, "--parts", "speed", "precision"]) == 0
    assert gpu_check.main([*args, "--parts", "correctness", "speed", "precision"]) == 1
    text = (tmp_path / "summary.md").read_text()
    assert "| correctness | FAIL | - | no result: timed out (exit code 124)" in text
    assert "**overall: FAIL: correctness**" in text
    gpu = (tmp_path / "gpu.md").read_text()
    assert "### correctness\n\n(no table: see correctness.log)" in gpu
    assert "### Speed table\n\n| a |" in gpu
    # a part that wrote PASS and then exited non-zero is a failure too
    args = ["summary", "--out", str(tmp_path), "--device", "cpu", "--parts", "speed"]
    assert gpu_check.main([*args, "--rc", "speed=1"]) == 1
