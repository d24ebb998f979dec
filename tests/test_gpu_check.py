"""The GPU check (benchmarks/gpu_check.sh, benchmarks/gpu_check.py), its CPU-runnable parts for
real: the Triton kernels under ``TRITON_INTERPRET=1`` against the reference loop (and a broken
engine caught), one bf16-mixed epoch of ``train.py fit`` on a fabricated CIFAR-10, and the shell
script's own logic (its CUDA probe, a dry run of parts on the CPU, the summary).

Each command runs in a child process: the interpreter only applies when ``TRITON_INTERPRET=1`` is
set before Triton is first imported (``import torch`` with dynamo imports it), as in
tests/test_fused.py.
"""

from __future__ import annotations

import ast
import json
import math
import os
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


def run(args: list[str], env: dict | None = None, timeout: int = 120, **kwargs):
    return subprocess.run(args, cwd=ROOT, env={**os.environ, **(env or {})}, text=True,
                          capture_output=True, timeout=timeout, **kwargs)


def result(out: Path, part: str) -> dict:
    return json.loads((out / f"{part}.json").read_text())


def test_every_exported_neuron_has_cases():
    from lightning_glif import neurons
    from lightning_glif.neurons.glif import GATE_MODES

    cases = gpu_check.neuron_cases()
    classes = {getattr(f, "func", f) for f in cases.values()}
    exported = {getattr(neurons, n) for n in neurons.__all__}
    membrane = {c for c in exported if isinstance(c, type)
                and issubclass(c, neurons.MembraneNeuron) and c is not neurons.MembraneNeuron}
    assert membrane <= classes
    assert {"GLIF", "GLIFf", "LIF", "PLIF"} <= {c.__name__ for c in membrane}
    assert {f"glif-{m}" for m in GATE_MODES} <= set(cases)
    # every fused surrogate kernel and both reset paths of the backward
    kinds = {f.keywords["surrogate"].kernel_code()[0] for f in cases.values()
             if "surrogate" in getattr(f, "keywords", {})}
    assert kinds == {1, 2, 3}  # and 0, the default Rectangular, everywhere else
    assert any(getattr(f, "keywords", {}).get("detach_reset") for f in cases.values())


def test_interpreted_triton_correctness_table_passes(tmp_path):
    pytest.importorskip("triton")
    done = run([sys.executable, str(SCRIPT), "correctness", "--device", "cpu", "--out",
                str(tmp_path), "--neurons", *NEURONS])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = table(tmp_path / "correctness.md", "neuron")
    assert sorted((r[0], r[2], r[3]) for r in rows) == sorted(
        (n, s, d) for n in NEURONS for s in SHAPES for d in DTYPES)
    assert all(r[4] == "triton (interpreted)" and r[5] == "equal" and r[-1] == "PASS"
               for r in rows), rows
    assert all(0 < float(r[6]) < 1 for r in rows)
    assert [r[8] for r in rows if r[0] == "lif-soft"] == ["- (none)"] * 6  # LIF learns nothing
    assert result(tmp_path, "correctness")["status"] == "PASS"


# Three ways to break the Triton engine, each run through the check in one child process.
BREAK = """
import sys
from pathlib import Path
from benchmarks import gpu_check
from lightning_glif.neurons.fused import triton_kernels as tk

forward, backward = tk.forward, tk.backward

def flipped_spike(*args):
    out = forward(*args)
    out.view(-1)[0] = 1 - out.view(-1)[0]
    return out

def wrong_input_gradient(*args):
    gx, gc, gg = backward(*args)
    return gx * 1.05, gc, gg

def wrong_parameter_gradient(*args):
    gx, gc, gg = backward(*args)
    return gx, gc * 1.05, gg * 1.05

codes = {}
for name, patch in [("forward", flipped_spike), ("backward", wrong_input_gradient),
                    ("backward", wrong_parameter_gradient)]:
    setattr(tk, name, patch)
    out = Path(sys.argv[1]) / patch.__name__
    codes[patch.__name__] = gpu_check.main(
        ["correctness", "--device", "cpu", "--out", str(out), "--neurons", "glif-soft",
         "--dtypes", "float32", "bfloat16"])
    tk.forward, tk.backward = forward, backward
print("CODES", codes)
"""


def test_a_broken_triton_engine_fails_the_check(tmp_path):
    pytest.importorskip("triton")
    done = run([sys.executable, "-c", BREAK, str(tmp_path)], env={"TRITON_INTERPRET": "1"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    codes = ast.literal_eval(done.stdout.split("CODES", 1)[1].strip())
    assert codes == {"flipped_spike": 1, "wrong_input_gradient": 1,
                     "wrong_parameter_gradient": 1}
    why = {"flipped_spike": "spikes differ", "wrong_input_gradient": "input gradient",
           "wrong_parameter_gradient": "parameter gradients"}
    for name, reason in why.items():
        rows = table(tmp_path / name / "correctness.md", "neuron")
        assert len(rows) == 4 and all(r[-1].startswith("FAIL") and reason in r[-1] for r in rows)
        assert result(tmp_path / name, "correctness")["status"] == "FAIL"
    assert all(r[5] == "DIFFER" for r in table(tmp_path / "flipped_spike" / "correctness.md",
                                               "neuron"))


def test_shell_dry_run_on_cpu_speed_and_bf16_precision(tmp_path):
    # The script's loop, tee and summary, with the CPU versions of two parts; the precision part
    # is one bf16-mixed epoch of train.py fit on a fabricated CIFAR-10 (16-mixed: CUDA-only).
    out = tmp_path / "out"
    env = {"GPU_CHECK_DEVICE": "cpu", "GPU_CHECK_PARTS": "speed precision",
           "PYTHON": sys.executable}
    done = run(["bash", str(SHELL), str(out)], env=env, timeout=180)
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
    assert "GLIF fused (ours)" in (out / "speed.md").read_text()
    assert (out / "precision.log").is_file() and (out / "speed.log").is_file()


def test_shell_without_cuda_says_so(tmp_path):
    out = tmp_path / "new" / "out"
    done = run(["bash", str(SHELL), str(out)],
               env={"CUDA_VISIBLE_DEVICES": "", "PYTHON": sys.executable}, timeout=60)
    assert done.returncode == 3, done.stdout + done.stderr
    assert "no CUDA" in done.stderr and "needs an NVIDIA GPU" in done.stderr
    assert "**overall: FAIL: cuda**" in (out / "summary.md").read_text()
    usage = run(["bash", str(SHELL)], timeout=60)
    assert usage.returncode == 2 and "usage:" in usage.stderr


def test_summary_fails_a_part_that_left_no_result(tmp_path, capsys):
    ok = {"part": "speed", "status": "PASS", "note": "timed", "seconds": 3.0}
    (tmp_path / "speed.json").write_text(json.dumps(ok))
    skipped = {"part": "precision", "status": "SKIP", "note": "n/a", "seconds": 1.0}
    (tmp_path / "precision.json").write_text(json.dumps(skipped))
    args = ["summary", "--out", str(tmp_path), "--rc", "speed=0", "precision=0",
            "correctness=124"]
    assert gpu_check.main([*args, "--parts", "speed", "precision"]) == 0
    assert gpu_check.main([*args, "--parts", "correctness", "speed", "precision"]) == 1
    text = (tmp_path / "summary.md").read_text()
    assert "| correctness | FAIL | - | no result: timed out (exit code 124)" in text
    assert "**overall: FAIL: correctness**" in text
    # a part that wrote PASS and then exited non-zero is a failure too
    assert gpu_check.main(["summary", "--out", str(tmp_path), "--parts", "speed",
                           "--rc", "speed=1"]) == 1
