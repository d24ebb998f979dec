"""The ablation grid: neuron variants (a YAML file) x seeds, each point a trial, run in
``OUT/<variant>/seed<k>-<id>/``. A point is the whole resolved run (:func:`identity`): one whose
base, variant or arguments changed is new and trains anew; a finished one does not train again."""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from pathlib import Path

import optuna
import yaml
from optuna.trial import TrialState

from lightning_glif.sweep import worker

CONF = Path(__file__).resolve().parents[1] / "conf"
#: The default base: memory over tens of steps matters there, so the gates do.
BASE_CONFIG = CONF / "experiment" / "delayed_row_digits.yaml"


def read_grid(path: str | Path, names: list[str] | None = None) -> dict[str, dict]:
    """A grid file's variants ``names`` (all for ``["all"]``; none: its ``default:`` list), name ->
    neuron ``class_path``/``init_args``."""
    data = yaml.safe_load(Path(path).read_text()) or {}
    variants = data.get("variants")
    if not isinstance(variants, dict) or not variants or "all" in variants:
        raise ValueError(f"{path}: expected a 'variants:' mapping name -> neuron (not 'all').")
    if bad := [n for n, neuron in variants.items() if "class_path" not in (neuron or {})]:
        raise ValueError(f"{path}: variants {bad} need a class_path (and init_args).")
    default = data.get("default", list(variants))
    names = list(variants) if names == ["all"] else names or default
    if unknown := [n for n in [*default, *names] if n not in variants]:
        raise ValueError(f"unknown variants {unknown}; {path} has: {', '.join(variants)}.")
    return {n: variants[n] for n in names}


def config_path(path: str | Path) -> Path:
    """``path``, else the shipped config it names (``conf/x.yaml``, or ``x.yaml`` in conf/)."""
    for candidate in (Path(path), CONF.parent / path, CONF / path):
        if candidate.is_file():
            return candidate.resolve()
    raise ValueError(f"config {path} does not exist: name a file, or a shipped one (conf/...).")


def config_text(path: Path) -> str:
    """The text of a config and of the configs it names (``config:``), as train.py reads them."""
    text = path.read_text()
    data = yaml.safe_load(text)
    nested = data.get("config", []) if isinstance(data, dict) else []
    nested = [nested] if isinstance(nested, str) else nested
    return text + "".join(config_text(path.parent / name) for name in nested)


def identity(configs: list[str], train_args: list[str], **run) -> str:
    """A hash of the resolved run: conf/default.yaml's text, ``configs``' and those ``train_args``
    name, ``train_args`` and ``run`` (variant, neuron, seed, ...)."""
    named = [a for i, a in enumerate(train_args) if i and train_args[i - 1] == "--config"]
    texts = [config_text(config_path(c)) for c in [CONF / "default.yaml", *configs, *named]]
    blob = json.dumps({"texts": texts, "args": train_args, **run}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def points(configs, variants, seeds, train_args) -> list[dict]:
    """One trial specification per (variant, seed), variants first, with its identity; each run
    is tested on its checkpoint best on val/acc."""
    configs, out = [str(config_path(c)) for c in configs], []
    for name, neuron in variants.items():
        for seed in seeds:
            run = {"neuron": neuron, "seed": seed, "monitor": "val/acc", "mode": "max"}
            key = identity(configs, train_args, variant=name, **run)
            spec = {"variant": name, "identity": key, "configs": configs, **run}
            spec |= {"params": {"model.backbone.init_args.neuron": neuron}}  # as --config would
            spec |= {"train_args": list(train_args), "dir": f"{name}/seed{seed}-{key[:8]}"}
            out.append(spec)
    return out


def enqueue(url: str, study: optuna.Study, specs: list[dict], reference: str) -> int:
    """Enqueue the points with no finished, waiting or running trial (again if theirs failed);
    record the grid and reference for ``ablate.py report``. How many were added."""
    with worker.lock(url):  # two commands started at once on one --out enqueue each point once
        if study.user_attrs.get("kind", "grid") != "grid":
            raise ValueError(f"study {study.study_name!r} is a search: pass another --study")
        ids = [spec["identity"] for spec in specs]
        for key, value in {"kind": "grid", "reference": reference, "grid": ids}.items():
            study.set_user_attr(key, value)
        states, added = defaultdict(set), 0
        for trial in study.get_trials(deepcopy=False):
            states[trial.user_attrs.get("identity")].add(trial.state)
        for spec in specs:
            have, what = states[spec["identity"]], f"{spec['variant']} seed {spec['seed']}"
            if TrialState.COMPLETE in have:
                print(f"[ablate] skip {what}: finished")
            elif have & {TrialState.WAITING, TrialState.RUNNING}:
                print(f"[ablate] queued {what}: waiting or running")
            else:  # skip_if_exists: not twice if another machine enqueues it at the same time
                params = {k: spec[k] for k in ("variant", "seed", "identity")}
                study.enqueue_trial(params, user_attrs=spec, skip_if_exists=not have)
                added += 1
    return added


def objective(workers: worker.Workers, study: optuna.Study, trial: optuna.Trial) -> float:
    """A grid study's objective: run the enqueued point; its value is the test accuracy."""
    spec = trial.user_attrs
    if "identity" not in spec:  # another worker took the last waiting point meanwhile
        raise optuna.TrialPruned("no grid point was waiting")
    return workers.run(trial, spec, f"{spec['variant']} seed {spec['seed']}", "test_acc")
