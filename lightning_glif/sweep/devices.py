"""Which devices each local worker's runs get: on CUDA its own GPUs (``CUDA_VISIBLE_DEVICES``,
``gpus_per_trial`` of them), and always its own share of the CPU cores (the child pins itself to
them and uses as many threads), so a run never sees a device another worker holds."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Slot:
    """One local worker's devices: ``gpus`` (ids for ``CUDA_VISIBLE_DEVICES``; empty: none,
    the run trains on the CPU) and ``cpus`` (core ids)."""

    index: int
    gpus: tuple[str, ...]
    cpus: tuple[int, ...]

    def env(self) -> dict[str, str]:
        """The environment variables of a child run in this slot."""
        threads = str(len(self.cpus))
        return {
            "CUDA_VISIBLE_DEVICES": ",".join(self.gpus),
            "OMP_NUM_THREADS": threads,
            "MKL_NUM_THREADS": threads,
            "ABLATION_THREADS": threads,
            "ABLATION_CPUS": ",".join(map(str, self.cpus)),
        }


def visible_gpus(gpus: str | None = None) -> list[str]:
    """The GPU ids to share out: ``gpus`` (comma-separated, ``--gpus``) if given, else this
    process's ``CUDA_VISIBLE_DEVICES`` if set, else every GPU torch sees."""
    if gpus is not None:
        return [g.strip() for g in gpus.split(",") if g.strip()]
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        return [g.strip() for g in os.environ["CUDA_VISIBLE_DEVICES"].split(",") if g.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def usable_cpus() -> list[int]:
    """The cores this process may run on (its affinity where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def default_workers(gpus: list[str], gpus_per_trial: int, cpus: list[int]) -> int:
    """Without ``--workers``: one per ``gpus_per_trial`` GPUs on CUDA, else 2 (1 on one core)."""
    if gpus and gpus_per_trial > 0:
        return max(1, len(gpus) // gpus_per_trial)
    return 2 if len(cpus) >= 2 else 1


def slots(workers: int, gpus: list[str], gpus_per_trial: int, cpus: list[int]) -> list[Slot]:
    """``workers`` slots: worker ``i`` gets GPUs ``[i*k, (i+1)*k)`` of ``gpus`` (``k`` =
    ``gpus_per_trial``; none when ``k`` is 0 or there are no GPUs) and an equal share of
    ``cpus`` (shared round-robin when there are more workers than cores)."""
    if workers < 1:
        raise ValueError(f"--workers must be at least 1, got {workers}.")
    if gpus_per_trial < 0:
        raise ValueError(f"--gpus-per-trial must be 0 or more, got {gpus_per_trial}.")
    if gpus and gpus_per_trial and workers * gpus_per_trial > len(gpus):
        raise ValueError(
            f"--workers {workers} x --gpus-per-trial {gpus_per_trial} needs "
            f"{workers * gpus_per_trial} GPUs, but {len(gpus)} are visible "
            f"({','.join(gpus)}): lower --workers or --gpus-per-trial (--gpus-per-trial 0 "
            "trains on the CPU)."
        )
    share = max(1, len(cpus) // workers)
    out = []
    for i in range(workers):
        mine = cpus[i * share : (i + 1) * share] or [cpus[i % len(cpus)]]
        k = gpus_per_trial if gpus else 0
        out.append(Slot(i, tuple(gpus[i * k : (i + 1) * k]), tuple(mine)))
    return out


def apply_in_child() -> None:
    """In the child: pin to the slot's cores and use that many threads (``ABLATION_CPUS``,
    ``ABLATION_THREADS``, set by :meth:`Slot.env`)."""
    import torch

    cpus = os.environ.get("ABLATION_CPUS")
    if cpus and hasattr(os, "sched_setaffinity"):
        try:
            os.sched_setaffinity(0, {int(c) for c in cpus.split(",")})
        except OSError:  # a core that is not ours on this machine (a copied env): keep all
            pass
    if "ABLATION_THREADS" in os.environ:
        torch.set_num_threads(int(os.environ["ABLATION_THREADS"]))


def seen_by_child() -> dict[str, object]:
    """What the child was given, recorded in its result (the device test reads it back)."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    import torch

    return {
        "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "cpus": cpus,
        "threads": torch.get_num_threads(),
    }
