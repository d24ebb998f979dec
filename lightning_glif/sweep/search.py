"""Search: an Optuna sampler (TPE by default) over a YAML space of ``train.py`` options.

A space file (``conf/search/*.yaml``)::

    config: [experiment/delayed_row_digits.yaml]   # base configs (as train.py --config)
    monitor: val/acc                               # what the search optimises, on validation
    mode: max
    seed: 0
    params:                                        # dotted train.py option -> distribution
      model.gate_lr_factor: {low: 1, high: 1000, log: true}         # float
      model.backbone.init_args.channels: {choices: [[8, 16], [16, 32]]}
      data.init_args.batch_size: {type: int, low: 32, high: 256, log: true}

Each trial is one run, as a grid point is (its own child, run directory ``OUT/trial<k>/``,
workers, heartbeat and retries); its value is the run's best ``monitor``. The best trial's
parameters are written as a YAML overlay (:func:`write_best`).
"""

from __future__ import annotations

import threading
import warnings
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from lightning_glif.sweep import trials as T

SAMPLERS = {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler}


def read_space(path: str | Path) -> dict[str, Any]:
    """The space file's content, checked: ``params`` (name -> distribution spec), ``config``
    (a list), ``monitor``, ``mode``, ``seed``. ValueError naming the entry and the fix."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--space {path}: no such file (the shipped spaces: conf/search/).")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict) or not isinstance(data.get("params"), dict) or not data["params"]:
        raise ValueError(f"{path}: expected a 'params:' mapping of train.py option -> range.")
    unknown = set(data) - {"config", "monitor", "mode", "seed", "params"}
    if unknown:
        raise ValueError(f"{path}: unknown keys {sorted(unknown)}; a space has config, monitor, "
                         "mode, seed and params.")  # fmt: skip
    config = data.get("config", [])
    data["config"] = [config] if isinstance(config, str) else list(config)
    if data.setdefault("mode", "max") not in ("max", "min"):
        raise ValueError(f"{path}: mode must be 'max' or 'min', got {data['mode']!r}.")
    data.setdefault("monitor", "val/acc")
    data.setdefault("seed", 0)
    for name, spec in data["params"].items():
        distribution(name, spec, path)
    return data


def distribution(name: str, spec: Any, where: Any = "space") -> BaseDistribution:
    """The Optuna distribution of one ``params`` entry."""
    if not isinstance(spec, dict):
        raise ValueError(f"{where}: {name}: expected a mapping like {{low: 0.1, high: 10, log: "
                         "true}} or {choices: [...]}, got {spec!r}.")  # fmt: skip
    if "choices" in spec:
        if not isinstance(spec["choices"], list) or not spec["choices"]:
            raise ValueError(f"{where}: {name}: choices must be a non-empty list.")
        # lists (e.g. channels) are stored as their YAML text: Optuna's choices are scalars
        return CategoricalDistribution([_choice(c) for c in spec["choices"]])
    kind = spec.get("type", "float")
    if kind not in ("float", "int") or "low" not in spec or "high" not in spec:
        raise ValueError(f"{where}: {name}: needs low and high (and optional type: float or "
                         "int, log: true, step), or choices.")  # fmt: skip
    extra = set(spec) - {"type", "low", "high", "log", "step"}
    if extra:
        raise ValueError(f"{where}: {name}: unknown keys {sorted(extra)}.")
    try:
        if kind == "int":
            return IntDistribution(int(spec["low"]), int(spec["high"]), log=bool(spec.get("log")),
                                   step=int(spec.get("step", 1)))  # fmt: skip
        return FloatDistribution(float(spec["low"]), float(spec["high"]),
                                 log=bool(spec.get("log")), step=spec.get("step"))  # fmt: skip
    except ValueError as e:
        raise ValueError(f"{where}: {name}: {e}") from None


def _choice(value: Any) -> Any:
    if isinstance(value, list | dict):
        return yaml.safe_dump(value, default_flow_style=True).strip()
    return value


def distributions(space: dict[str, Any]) -> dict[str, BaseDistribution]:
    return {n: distribution(n, s) for n, s in space["params"].items()}


class Asker:
    """New trials of a search study from its sampler, until the study holds ``trials`` of them
    (the originals of retried or requeued trials and duplicates do not count). Workers of one
    process ask one at a time; workers of several processes may overshoot by one each."""

    def __init__(self, study: optuna.Study) -> None:
        self.study = study
        attrs = study.user_attrs
        self.space, self.budget = attrs["space"], int(attrs["trials"])
        self.spec = {k: attrs[k] for k in ("configs", "train_args", "monitor", "mode", "seed")}
        self._lock = threading.Lock()

    def left(self) -> int:
        trials = self.study.get_trials(deepcopy=False)
        replaced = set()
        for t in trials:
            replaced.update(t.system_attrs.get("retry_history", []))
            if "requeued_from" in t.system_attrs:
                replaced.add(t.system_attrs["requeued_from"])
        counted = [t for t in trials if t.number not in replaced and not T.is_duplicate(t)]
        return self.budget - len(counted)

    def ask(self):
        with self._lock:
            if self.left() <= 0:
                return None
            with warnings.catch_warnings():  # the heartbeat thread is ours (worker.py)
                warnings.filterwarnings("ignore", "Heartbeat of storage", UserWarning)
                trial = self.study.ask(fixed_distributions=distributions(self.space))
            for k, v in {"kind": T.SEARCH, **self.spec}.items():
                trial.set_user_attr(k, v)
            return self.study._storage.get_trial(trial._trial_id)


def best_trial(study: optuna.Study):
    """The best COMPLETE trial, or None."""
    done = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    return study.best_trial if done else None


def overlay(params: dict[str, Any], space: dict[str, Any]) -> dict[str, Any]:
    """Dotted ``train.py`` options as a nested config overlay (a list choice back as a list)."""
    nested: dict[str, Any] = {}
    for name, value in params.items():
        if "choices" in space["params"].get(name, {}) and isinstance(value, str):
            for c in space["params"][name]["choices"]:
                if _choice(c) == value:
                    value = c
        node = nested
        *parents, leaf = name.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return nested


def write_best(study: optuna.Study, path: Path) -> Path | None:
    """``path``: the best trial's parameters as a YAML overlay for ``train.py fit --config``."""
    best = best_trial(study)
    if best is None:
        return None
    attrs = study.user_attrs
    configs = " ".join(f"--config {c}" for c in attrs["configs"])
    head = (
        f"# best trial #{best.number} of study {study.study_name!r}: {attrs['monitor']} = "
        f"{best.value:.6g} ({attrs['mode']}), of {len(study.get_trials(deepcopy=False))} trials\n"
        f"# python train.py fit {configs} --config {path.name}\n"
    )
    path.write_text(head + yaml.safe_dump(overlay(best.params, attrs["space"]), sort_keys=False))
    return path
