"""The ablation grid: a YAML file of neuron variants, and its (variant, seed) points as enqueued
trials of a study (:func:`enqueue`), each with what it runs in its user attributes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import TrialState

from lightning_glif.sweep import trials as T
from lightning_glif.sweep.storage import fail_stale_trials

ALL = "all"  # --variants all: every variant of the grid


def read_grid(grid: str | Path) -> tuple[dict[str, dict], list[str]]:
    """A grid YAML file's ``variants`` mapping (name -> neuron class_path/init_args) and its
    ``default`` subset (the variant names a run without ``--variants`` trains; every variant
    when the file has no ``default:``)."""
    data = yaml.safe_load(Path(grid).read_text()) or {}
    variants = data.get("variants")
    if not isinstance(variants, dict) or not variants:
        raise ValueError(f"{grid}: expected a top-level 'variants:' mapping name -> neuron.")
    for name, neuron in variants.items():
        if not isinstance(neuron, dict) or "class_path" not in neuron:
            raise ValueError(f"{grid}: variant {name!r} needs a class_path (and init_args).")
    if ALL in variants:
        raise ValueError(f"{grid}: {ALL!r} is reserved (--variants {ALL}), rename that variant.")
    default = data.get("default", list(variants))
    if not isinstance(default, list) or not default:
        raise ValueError(f"{grid}: 'default:' must be a non-empty list of variant names.")
    unknown = [n for n in default if n not in variants]
    if unknown:
        raise ValueError(f"{grid}: 'default:' names unknown variants {unknown}.")
    return variants, default


def load_variants(grid: str | Path, names: list[str] | None = None) -> dict[str, dict]:
    """The variants of a grid YAML file to run: ``names`` (in that order), every variant for
    ``["all"]``, the file's ``default:`` subset when ``names`` is None or empty."""
    variants, default = read_grid(grid)
    if names == [ALL]:
        return variants
    names = names or default
    unknown = [n for n in names if n not in variants]
    if unknown:
        raise ValueError(f"unknown variants {unknown}; {grid} has: {', '.join(variants)}.")
    return {n: variants[n] for n in names}


def specs(
    configs: list[str],
    variants: dict[str, dict],
    seeds: list[int],
    train_args: list[str],
    monitor: str,
    mode: str,
) -> list[dict[str, Any]]:
    """One trial's user attributes per (variant, seed), variants first: what the run is."""
    configs = [str(Path(c).resolve()) for c in configs]
    return [
        {"kind": T.GRID, "variant": name, "seed": seed, "neuron": neuron, "configs": configs,
         "train_args": list(train_args), "monitor": monitor, "mode": mode}
        for name, neuron in variants.items()
        for seed in seeds
    ]  # fmt: skip


def enqueue(study: optuna.Study, points: list[dict[str, Any]], log=print) -> int:
    """Enqueue each grid point that has no finished (COMPLETE), waiting or running trial; a
    point whose trials all failed is enqueued again. Returns how many were enqueued."""
    fail_stale_trials(study)  # a dead worker's trial: retried, not waited for
    by_key: dict[tuple, list] = {}
    for t in study.get_trials(deepcopy=False):
        if T.key(t) is not None and not T.is_duplicate(t):
            by_key.setdefault(T.key(t), []).append(t)
    added = 0
    for spec in points:
        name, seed = spec["variant"], spec["seed"]
        have = by_key.get((name, seed), [])
        done = [t for t in have if t.state == TrialState.COMPLETE]
        if done:
            log(f"[ablate] skip {name} seed {seed}: finished (trial #{done[0].number})")
            continue
        active = [t for t in have if t.state in T.ACTIVE]
        if active:
            t = active[0]
            if t.state == TrialState.WAITING and _spec(t) != spec:
                # not started yet: it runs with this command's options, as a fresh one would
                for k, v in spec.items():
                    study._storage.set_trial_user_attr(t._trial_id, k, v)
            log(f"[ablate] queued {name} seed {seed}: {t.state.name.lower()} (trial #{t.number})")
            continue
        study.enqueue_trial({}, user_attrs=spec)
        added += 1
    return added


def _spec(trial) -> dict[str, Any]:
    return {k: trial.user_attrs.get(k) for k in T.SPEC_KEYS}
