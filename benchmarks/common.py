"""Shared by the benchmarks: interleaved timing, saved-bytes counting, machine notes, tables."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_times(
    fns: dict[str, Callable[[], object]], rounds: int, device: torch.device, warmup: int = 1
) -> dict[str, list[float]]:
    """Seconds of each call of each function, timed round-robin (one call of each per round) so
    that a busy phase of a shared machine hits every contender alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sync(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - t0)
    return times


def rotated_rounds(ways: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """The seconds each way returns (it times itself: a whole run, a command), over ``rounds``
    rounds; round ``i`` runs the ways in their order rotated to start with the ``i mod n``-th, so
    none always runs first or after the same one."""
    names = list(ways)
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(rounds):
        first = i % len(names)
        for name in names[first:] + names[:first]:
            times[name].append(ways[name]())
    return times


def paired_ratio_cell(values: list[float], reference: list[float]) -> str:
    """``"1.43x [1.37, 1.48]"``: the geometric mean of the per-round ratios with its 95% interval
    (:func:`lightning_glif.stats.paired_ratio`; no interval from one round)."""
    from lightning_glif.stats import paired_ratio

    paired = paired_ratio(values, reference)
    ci = "" if paired.n < 2 else f" [{paired.lo:.2f}, {paired.hi:.2f}]"
    return f"{paired.mean:.2f}x{ci}"


def saved_bytes(fn: Callable[[], object]) -> int:
    """Bytes of every tensor autograd saves for the backward while ``fn`` runs (a tensor saved
    twice counts twice: an upper bound)."""
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total


def machine_note(device: torch.device) -> str:
    """One line on what the numbers were measured on (the load matters on a shared machine)."""
    if device.type == "cuda":
        what = torch.cuda.get_device_name(device)
    else:
        what = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"torch {torch.__version__}, {device.type}: {what}, load average {load:.2f}"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
