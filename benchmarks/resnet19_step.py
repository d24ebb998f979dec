"""End to end: one ResNet-19 training step (T=6, batch 8, CIFAR-sized input) with the fused and the
reference GLIF, and (``--compile``) the fused one under ``torch.compile``; images per second,
peak memory and what autograd keeps for the backward.

    python benchmarks/resnet19_step.py                 # minutes on a 2-core CPU
    python benchmarks/resnet19_step.py --steps 5 --repeats 3
    python benchmarks/resnet19_step.py --compile       # + a compiled row (first compile: minutes)
    python benchmarks/resnet19_step.py --repeats 1 --steps 1   # the memory columns need only 1

Memory saving (``ResNet19(memory_saving=True)``, :mod:`lightning_glif.layers.memory`: spikes
kept as bits by the convolutions they feed, each tdBN + neuron keeping only the tdBN's input and
recomputed in the backward) is on in the fused row and off in the "fused, memory saving off" row
(``--no-saving-off`` drops that row) and in the reference row (the baseline: the reference neuron
on the plain layers).

``--compile``: the net with fused GLIF, ``net.compile(fullgraph=True)`` (Inductor, as
``--model.compile true``; the memory saving steps aside there); its warm-up step compiles (the
"first step s" column) and is not timed. Its "saved MB" and "of which neurons s" are not measured
(the compiled graph decides what it saves; the neurons are the fused row's), its peak RSS growth
includes the compiler's.

Each backend runs in its own child process (so that peak memory is its own), alternately
``--repeats`` times; a child builds the net, takes one warm-up step, then times ``--steps``
SGD steps (forward, cross-entropy on the time-averaged logits, backward, update) and reports the
median. Peak memory: on CPU the growth of the peak resident set over the process before the first
step; on CUDA ``max_memory_allocated``. "saved MB" is what autograd keeps for the backward of one
training forward (every tensor passed to ``save_for_backward`` or saved by an op, seen through
``saved_tensors_hooks``: packed bits and the inputs the recomputation starts from included; a
tensor saved twice counts twice, a broadcast view its full size: an upper bound), "distinct MB"
the bytes of the distinct storages among those (what the graph actually holds); both are
deterministic. "of which neurons s" is the forward+backward time of the 17 neurons alone on
inputs of the shapes they see in the step (the part of the step the neuron backend can change;
the rest is mostly convolutions).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import machine_note, markdown_table, saved_bytes, sync  # noqa: E402


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def child(args) -> dict:
    from lightning_glif.models.resnet import ResNet19
    from lightning_glif.neurons import GLIF

    device = torch.device(args.device)
    compiled = args.backend == "compiled"
    backend = {"compiled": "fused", "fused-off": "fused"}.get(args.backend, args.backend)
    saving = args.backend in ("fused", "compiled")  # the reference row is the old baseline

    def build(memory_saving: bool) -> torch.nn.Module:
        torch.manual_seed(0)
        neuron = partial(GLIF, backend=backend)
        return ResNet19(neuron, args.time_steps, memory_saving=memory_saving).to(device)

    net = build(saving)
    if compiled:
        net.compile(fullgraph=True)  # what SpikingClassifier(compile=True) does
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    images = torch.randn(args.batch, 3, 32, 32, device=device)
    labels = torch.randint(0, 10, (args.batch,), device=device)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(net(images).mean(0), labels)
        loss.backward()
        opt.step()

    before = rss_mb()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    step()  # warm-up (compiles the compiled net)
    first = time.perf_counter() - t0
    times = []
    for _ in range(args.steps):
        sync(device)
        t0 = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - t0)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**20
    else:  # ru_maxrss is in KiB on Linux
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before
    result = {"step_s": statistics.median(times), "first_s": first, "peak_mb": peak}
    nan = float("nan")
    if compiled:
        return {**result, "saved_mb": nan, "distinct_mb": nan, "neurons_s": nan, "saved_on_mb": nan}
    opt.zero_grad(set_to_none=True)
    saved = saved_bytes(lambda: net(images)) / 2**20
    distinct = distinct_saved_bytes(lambda: net(images)) / 2**20
    saved_on = nan
    if args.backend == "reference":  # for the record: the reference neuron with the savings on
        saved_on = saved_bytes(lambda: build(True)(images)) / 2**20
    return {
        **result,
        "saved_mb": saved,
        "distinct_mb": distinct,
        "saved_on_mb": saved_on,
        "neurons_s": neuron_seconds(net, images, device),
    }


def distinct_saved_bytes(fn) -> int:
    """Bytes of the distinct storages among the tensors autograd saves while ``fn`` runs (a
    storage saved twice, or a view of a saved one, counts once)."""
    storages: dict[tuple, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        storages[(t.device, s.data_ptr())] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(storages.values())


def neuron_seconds(net, images, device) -> float:
    """Forward+backward time of the net's neurons alone, on inputs of the shapes they see in a
    step (median of 3 per neuron, summed): the share of the step the neuron backend can change."""
    from lightning_glif.neurons import SpikingNeuron

    neurons = [m for m in net.modules() if isinstance(m, SpikingNeuron)]
    shapes = {}

    def record(module, args):  # returns None: the inputs stay as they are
        shapes[module] = args[0].shape

    hooks = [m.register_forward_pre_hook(record) for m in neurons]
    with torch.no_grad():
        net(images)
    for h in hooks:
        h.remove()
    total = 0.0
    for m in neurons:
        x = torch.randn(shapes[m], device=device).mul_(0.5).add_(0.3).requires_grad_()
        grad = torch.randn(shapes[m], device=device)
        runs = []
        for _ in range(3):
            sync(device)
            t0 = time.perf_counter()
            m(x).backward(grad)
            sync(device)
            runs.append(time.perf_counter() - t0)
        total += statistics.median(runs)
    return total


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--time-steps", type=int, default=6)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per child process")
    parser.add_argument("--repeats", type=int, default=2, help="child processes per backend")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="also time the fused net under torch.compile(fullgraph=True)",
    )
    parser.add_argument(
        "--no-saving-off", action="store_true", help="drop the 'fused, memory saving off' row"
    )
    parser.add_argument("--backend", help=argparse.SUPPRESS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(child(args)))
        return
    device = torch.device(args.device)
    print(f"# ResNet-19 training step ({machine_note(device)})\n")
    results: dict[str, list[dict]] = {"fused": [], "reference": []}
    if not args.no_saving_off:
        results["fused-off"] = []
    if args.compile:
        results["compiled"] = []
    for _ in range(args.repeats):
        for backend in results:
            cmd = [
                sys.executable,
                __file__,
                "--child",
                "--backend",
                backend,
                "--batch",
                str(args.batch),
                "--time-steps",
                str(args.time_steps),
                "--steps",
                str(args.steps),
                "--device",
                args.device,
            ]
            cmd += ["--threads", str(args.threads)] if args.threads else []
            out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
            if out.returncode != 0:
                sys.exit(f"{' '.join(cmd)} failed:\n{out.stderr[-4000:]}")
            results[backend].append(json.loads(out.stdout.strip().splitlines()[-1]))
    med = {b: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for b, rs in results.items()}
    ref = med["reference"]["step_s"]
    names = {
        "fused": "GLIF fused (eager)",
        "reference": "GLIF reference (eager, no saving)",
        "compiled": "GLIF fused, torch.compile",
        "fused-off": "GLIF fused, memory saving off",
    }
    rows = []
    for backend, r in med.items():
        rows.append(
            [
                names[backend],
                f"{r['step_s']:.3f}",
                f"{args.batch / r['step_s']:.2f}",
                f"{ref / r['step_s']:.2f}",
                f"{r['step_s'] / med['fused']['step_s']:.2f}",
                f"{r['first_s']:.1f}",
                _num(r["neurons_s"], 3),
                f"{r['peak_mb']:.0f}",
                _num(r["saved_mb"], 0),
                _num(r["distinct_mb"], 0),
            ]
        )
    print(
        f"T={args.time_steps}, batch {args.batch}, 3x32x32, SGD; median over "
        f"{args.repeats} processes x {args.steps} steps\n"
    )
    peak = "peak MB (CUDA allocated)" if device.type == "cuda" else "peak RSS growth MB"
    header = [
        "neuron",
        "step s",
        "images/s",
        "speed-up vs reference",
        "step / fused eager",
        "first step s",
        "of which neurons s",
        peak,
        "saved MB",
        "distinct MB",
    ]
    print(markdown_table(header, rows))
    fused, reference = med["fused"], med["reference"]
    print(
        f"\nsaved for backward, fused (memory saving on) / reference = "
        f"{fused['saved_mb'] / reference['saved_mb']:.3f} "
        f"(distinct storages: {fused['distinct_mb'] / reference['distinct_mb']:.3f}; "
        "goal: <= 0.25)"
    )
    if "fused-off" in med:
        off = med["fused-off"]
        print(
            "memory saving off: fused / reference = "
            f"{off['saved_mb'] / reference['saved_mb']:.3f} (distinct "
            f"{off['distinct_mb'] / reference['distinct_mb']:.3f}); on / off = "
            f"{fused['saved_mb'] / off['saved_mb']:.3f} (distinct "
            f"{fused['distinct_mb'] / off['distinct_mb']:.3f})"
        )
    print(f"(reference neuron with the memory saving on: {reference['saved_on_mb']:.0f} saved MB)")
    print(
        f"\nfused / reference step time = {med['fused']['step_s'] / ref:.3f} (goal: speed-up "
        ">= 1.5)"
    )
    if args.compile:
        print(
            f"compiled / fused eager step time = "
            f"{med['compiled']['step_s'] / med['fused']['step_s']:.3f}, compiled / reference = "
            f"{med['compiled']['step_s'] / ref:.3f}"
        )
    print(f"({machine_note(device)} at the end)")


def _num(value: float, digits: int) -> str:
    return "-" if value != value else f"{value:.{digits}f}"  # NaN: not measured


if __name__ == "__main__":
    main()
