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
element and step in float32, i.e. 2.5 float32 tensors of x's size read and as many written),
measured in the same run. "saved B/el" is what autograd keeps for the backward per element and
time step, counted with ``saved_tensors_hooks``. Freeing the previous call's spikes and input
gradient happens between the timed calls (on Linux a large free can unmap its pages,
milliseconds on a VM, which would land on whichever neuron runs next); allocating and first
touching new outputs stays in each call's time (the page faults per fused call are printed).

The roofline is the noisiest row on a shared machine (a pure memory-bandwidth test, hit by any
other process's traffic), so both its buffers are written before timing and each of its rounds
is the fastest of ``ROOFLINE_REPEATS`` back-to-back copies; the goal line gives the fused op's
ratio to it both of medians and of fastest calls.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere in the repo

from benchmarks.baselines import contenders  # noqa: E402
from benchmarks.common import (  # noqa: E402
    machine_note,
    markdown_table,
    saved_bytes,
    sync,
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
ROOFLINE = "copy roofline"
ROOFLINE_REPEATS = 3  # copies per round; the round's time is the fastest of them
ROOFLINE_GOAL = 3.0  # fused GLIF fwd+bwd <= 3x the copy of its bytes
#: Minor page faults of each timed call of the last bench_shape, per neuron.
LAST_FAULTS: dict[str, list[int]] = {}


class Roofline:
    """``copy_`` of ``numel * FUSED_BYTES_PER_ELEMENT / 2`` bytes from one warm float32 buffer to
    another: as many bytes read and written as the fused op moves. Each call times
    ``ROOFLINE_REPEATS`` copies and keeps the fastest in ``rounds``."""

    def __init__(self, numel: int, device: torch.device):
        n = numel * FUSED_BYTES_PER_ELEMENT // 8  # float32 values read (and as many written)
        self.src = torch.randn(n, device=device)
        self.dst = torch.empty(n, device=device)
        self.dst.copy_(self.src)  # fault in / touch both buffers before timing
        self.bytes = 2 * n * self.src.element_size()
        self.device = device
        self.rounds: list[float] = []

    def __call__(self) -> None:
        best = math.inf
        for _ in range(ROOFLINE_REPEATS):
            sync(self.device)
            t0 = time.perf_counter()
            self.dst.copy_(self.src)
            sync(self.device)
            best = min(best, time.perf_counter() - t0)
        self.rounds.append(best)


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

    faults: dict[str, list[int]] = {name: [] for name in runs}
    kept: list[torch.Tensor] = []  # the last call's spikes, freed before the next call

    def step(name, run):
        def fn():
            before = minor_faults()
            spikes = run(x)
            spikes.backward(grad)
            faults[name].append(minor_faults() - before)
            kept.append(spikes)

        return fn

    def release():
        # Untimed, before every call: drop the previous call's spikes and input gradient.
        # Freeing a large tensor can return its pages to the OS (munmap: milliseconds on a VM),
        # which would otherwise be charged to whichever contender runs next.
        x.grad = None
        kept.clear()

    fns = {name: step(name, run) for name, run in runs.items()}
    roofline = Roofline(x.numel(), device)
    fns[ROOFLINE] = roofline
    times = timed_rounds(fns, rounds, device, release)
    times[ROOFLINE] = roofline.rounds[-rounds:]  # the timed rounds, each the fastest copy
    saved = {name: saved_bytes(lambda run=run: run(x)) / x.numel() for name, run in runs.items()}
    LAST_FAULTS.clear()
    LAST_FAULTS.update({name: f[-rounds:] for name, f in faults.items()})
    return times, saved, failed


def timed_rounds(fns, rounds, device, release, warmup=1) -> dict[str, list[float]]:
    """As :func:`benchmarks.common.interleaved_times` (round-robin, one call of each per round),
    with ``release()`` run untimed before every call."""
    for fn in fns.values():
        for _ in range(warmup):
            release()
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            release()
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - t0)
    release()
    return times


def minor_faults() -> int:
    """Minor page faults of this process so far (0 where ``resource`` is missing): a call that
    writes freshly mapped output pages pays for faulting (and zeroing) them, which the
    roofline's warm buffers do not; allocator history decides when that happens."""
    try:
        import resource
    except ImportError:
        return 0
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def report(shape, times, saved, baseline):
    """Markdown table; ratios use medians, "best" (the fastest call) shows the uncontended
    speed when other processes share the machine."""
    med = {name: statistics.median(ts) for name, ts in times.items()}
    roof = med[ROOFLINE]
    moved = math.prod(shape) * FUSED_BYTES_PER_ELEMENT
    rows = []
    for name, t in sorted(med.items(), key=lambda kv: kv[1]):
        label, b = name, "-"
        if name == ROOFLINE:
            label = (
                f"copy of the fused op's bytes ({moved / 1e6:.1f} MB, "
                f"{moved / roof / 1e9:.0f} GB/s)"
            )
        else:
            b = f"{saved[name]:.1f}"
        rows.append(
            [
                label,
                f"{t * 1e3:.2f}",
                f"{min(times[name]) * 1e3:.2f}",
                f"{t / med[baseline]:.3f}",
                f"{t / roof:.2f}",
                b,
            ]
        )
    header = ["neuron", "fwd+bwd ms", "best ms", f"x {baseline}", "x roofline", "saved B/el"]
    return markdown_table(header, rows), med


def roofline_note(shape, times) -> str:
    """What the roofline copied, and its fastest and median round."""
    numel = math.prod(shape)
    n = numel * FUSED_BYTES_PER_ELEMENT // 8
    ts = times[ROOFLINE]
    return (
        f"Roofline: `copy_` of {n} float32 = {4 * n / 1e6:.1f} MB read + {4 * n / 1e6:.1f} MB "
        f"written = {FUSED_BYTES_PER_ELEMENT} B per element-step of x (the fused op: forward "
        f"reads x and writes the spikes, 8 B; backward reads x and dL/dspikes and writes dL/dx, "
        f"12 B); each round the fastest of {ROOFLINE_REPEATS} copies: best "
        f"{min(ts) * 1e3:.2f} ms, median {statistics.median(ts) * 1e3:.2f} ms, "
        f"max {max(ts) * 1e3:.2f} ms."
    )


def verdict(median_ratio: float, best_ratio: float, goal: float) -> str:
    both = [median_ratio <= goal, best_ratio <= goal]
    return "met" if all(both) else ("met by one of median/best" if any(both) else "NOT met")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--shapes",
        nargs="+",
        default=DEFAULT_SHAPES,
        help="TxBxCxHxW or TxBxC, e.g. 6x16x128x16x16",
    )
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
        base = next(
            n for n in (baseline, "GLIF reference loop (ours)", FUSED, ROOFLINE) if n in times
        )
        table, med = report(shape, times, saved, base)
        print(table)
        print("\n" + roofline_note(shape, times))
        faults = LAST_FAULTS.get(FUSED)
        if faults:
            pages = math.prod(shape) * 4 // 4096
            print(
                f"\nFused GLIF minor page faults per call: median "
                f"{statistics.median(faults):.0f}, max {max(faults)} (a float32 tensor of x's "
                f"size is {pages} pages of 4 KiB; the spikes and the input gradient are new "
                "tensors each call)."
            )
        goals = [(BASELINE, 0.25), ("SpikingJelly LIFNode", 0.5), (ROOFLINE, ROOFLINE_GOAL)]
        met = [
            f"fused GLIF / {n} = {med[FUSED] / med[n]:.3f} (best: "
            f"{min(times[FUSED]) / min(times[n]):.3f}; goal <= {g}: "
            f"{verdict(med[FUSED] / med[n], min(times[FUSED]) / min(times[n]), g)})"
            for n, g in goals
            if n in med and FUSED in med
        ]
        print("\n" + "; ".join(met))
    print(f"\n({machine_note(device)} at the end)")


if __name__ == "__main__":
    main()
