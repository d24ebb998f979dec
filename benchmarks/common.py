"""Shared by the benchmarks: interleaved timing, saved-bytes counting, machine notes, tables."""

from __future__ import annotations

import math
import os
import platform
import time
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
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


class Ratio(NamedTuple):
    """A geometric mean ratio and its confidence interval ``[lo, hi]`` over ``n`` rounds."""

    mean: float
    lo: float
    hi: float
    n: int


def paired_ratio(values, reference, confidence: float = 0.95) -> Ratio:
    """The interval of a ratio ``values[i] / reference[i]`` of positive values paired by round:
    the Student-t interval of the mean log ratio (``scipy.stats.ttest_1samp``), exponentiated.
    ``mean`` is the geometric mean of the ratios; ``[lo, hi]`` is not symmetric about it (nan
    with one round).

    Why logs: a ratio's spread is multiplicative (a round twice as slow doubles both times), and
    the mean of ``log(v / r)`` treats 2x and 0.5x alike, where the plain mean of ratios would
    not."""
    from scipy import stats

    v, r = np.asarray(values, dtype=float), np.asarray(reference, dtype=float)
    if v.shape != r.shape or v.ndim != 1 or not v.size:
        raise ValueError(f"paired_ratio: {v.size} values vs {r.size} reference, need equal > 0")
    if (v <= 0).any() or (r <= 0).any():
        raise ValueError("paired_ratio needs positive values (times, sizes), got one <= 0")
    logs = np.log(v / r)
    if v.size == 1 or np.ptp(logs) == 0:  # no spread to estimate, or none at all
        edge = math.nan if v.size == 1 else float(np.exp(logs[0]))
        return Ratio(float(np.exp(logs.mean())), edge, edge, v.size)
    ci = stats.ttest_1samp(logs, 0.0).confidence_interval(confidence)
    return Ratio(float(np.exp(logs.mean())), math.exp(ci.low), math.exp(ci.high), v.size)


def paired_ratio_cell(values: list[float], reference: list[float]) -> str:
    """``"1.43x [1.37, 1.48]"``: the geometric mean of the per-round ratios with its 95% interval
    (:func:`paired_ratio`; no interval from one round)."""
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
