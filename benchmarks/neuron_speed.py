"""Neuron forward+backward time and bytes saved for the backward, against a copy roofline.

    python benchmarks/neuron_speed.py                      # default shapes, ~2-4 min on 2 cores
    python benchmarks/neuron_speed.py --shapes 6x16x128x16x16 --rounds 15

For each input shape ``[T, B, C, H, W]`` (or ``[T, B, C]``) every neuron of
:mod:`benchmarks.baselines` runs forward, then backward from a fixed random upstream gradient;
the calls are interleaved round-robin and the median is reported (and the fastest call, which is
what an idle machine gives), with the ratio to SpikingJelly's
GatedLIFNode (the baseline; our reference loop if SpikingJelly is missing) and to the roofline:
the time of a plain ``copy_`` of as many bytes as the fused op must move (forward: read x, write
spikes; backward: read x and the upstream gradient, write the input gradient: 20 bytes per
element and step in float32), measured in the same run. "saved B/el" is what autograd keeps for
the backward per element and time step, counted with ``saved_tensors_hooks``.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere in the repo

from benchmarks.baselines import contenders  # noqa: E402
from benchmarks.common import (  # noqa: E402
    interleaved_times,
    machine_note,
    markdown_table,
    saved_bytes,
)

DEFAULT_SHAPES = [
    "4x16x128x16x16",
    "6x16x128x16x16",
    "16x16x128x16x16",
    "6x32x256x8x8",
    "6x64x512",
]
FUSED = "GLIF fused (ours)"
BASELINE = "SpikingJelly GatedLIFNode"
FUSED_BYTES_PER_ELEMENT = 20  # float32: forward 4 + 4, backward 4 + 4 + 4


def bench_shape(shape, makers, rounds, device):
    T, C = shape[0], shape[2]
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(shape, generator=g) * 0.5 + 0.3).to(device).requires_grad_()
    grad = torch.randn(shape, generator=g).to(device)
    runs, failed = {}, {}
    for name, make in makers.items():
        try:
            run = make(C, T, device)
            run(x).backward(grad)
            runs[name] = run
        except Exception as e:  # e.g. a neuron that only takes [T, B, C, H, W]
            failed[name] = f"{type(e).__name__}: {str(e).splitlines()[0][:100]}"

    def step(run):
        def fn():
            x.grad = None
            run(x).backward(grad)

        return fn

    fns = {name: step(run) for name, run in runs.items()}
    # Roofline: copy FUSED_BYTES_PER_ELEMENT / 8 tensors' worth of float32 (a copy reads and
    # writes 4 bytes each per element).
    n = x.numel() * FUSED_BYTES_PER_ELEMENT // 8
    src, dst = torch.randn(n, device=device), torch.empty(n, device=device)
    fns["copy roofline"] = lambda: dst.copy_(src)
    times = interleaved_times(fns, rounds, device)
    saved = {name: saved_bytes(lambda run=run: run(x)) / x.numel() for name, run in runs.items()}
    return times, saved, failed


def report(shape, times, saved, baseline):
    """Markdown table; ratios use medians, "best" (the fastest call) shows the uncontended
    speed when other processes share the machine."""
    med = {name: statistics.median(ts) for name, ts in times.items()}
    roof = med["copy roofline"]
    gbps = math.prod(shape) * FUSED_BYTES_PER_ELEMENT / roof / 1e9
    rows = []
    for name, t in sorted(med.items(), key=lambda kv: kv[1]):
        label, b = name, "-"
        if name == "copy roofline":
            label = f"copy of the fused op's bytes ({gbps:.0f} GB/s)"
        else:
            b = f"{saved[name]:.1f}"
        rows.append([label, f"{t * 1e3:.2f}", f"{min(times[name]) * 1e3:.2f}",
                     f"{t / med[baseline]:.3f}", f"{t / roof:.2f}", b])
    header = ["neuron", "fwd+bwd ms", "best ms", f"x {baseline}", "x roofline", "saved B/el"]
    return markdown_table(header, rows), med


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", nargs="+", default=DEFAULT_SHAPES,
                        help="TxBxCxHxW or TxBxC, e.g. 6x16x128x16x16")
    parser.add_argument("--rounds", type=int, default=9, help="timed calls per neuron and shape")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--only", nargs="*", help="substrings of the neuron names to keep")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    makers, missing = contenders()
    if args.only:
        keep = [FUSED, *args.only]
        makers = {k: v for k, v in makers.items() if any(s in k for s in keep)}
    baseline = BASELINE if BASELINE in makers else "GLIF reference loop (ours)"
    print(f"# Neuron forward+backward ({machine_note(device)})\n")
    for name, why in missing.items():
        print(f"- skipped {name}: {why}")
    for spec in args.shapes:
        shape = tuple(int(d) for d in spec.split("x"))
        times, saved, failed = bench_shape(shape, makers, args.rounds, device)
        print(f"\n## x = {list(shape)} float32, median of {args.rounds} interleaved rounds\n")
        for name, why in failed.items():
            print(f"- {name} cannot run this shape: {why}")
        base = baseline if baseline in times else "GLIF reference loop (ours)"
        table, med = report(shape, times, saved, base)
        print(table)
        goals = [(BASELINE, 0.25), ("SpikingJelly LIFNode", 0.5), ("copy roofline", 3.0)]
        met = [f"fused GLIF / {n} = {med[FUSED] / med[n]:.3f} (best: "
               f"{min(times[FUSED]) / min(times[n]):.3f}; goal <= {g})"
               for n, g in goals if n in med]
        print("\n" + "; ".join(met))
    print(f"\n({machine_note(device)} at the end)")


if __name__ == "__main__":
    main()
