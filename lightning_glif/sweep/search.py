"""Search: Optuna's default sampler (TPE) over a YAML space of ``train.py`` options (the
format: conf/search/gate_lr.yaml, docs/sweeps.md). Each trial is one run, as a grid point is, in
``OUT/<study>/<id>/``; the best trial's options are written to ``best.yaml``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import optuna
import yaml
from optuna.trial import TrialState

from lightning_glif.sweep.grid import config_path, identity
from lightning_glif.sweep.worker import Workers, child_env, option_args

RANGE = {"type", "low", "high", "log", "step"}  # the keys of a params entry, or "choices"


def read_space(path: str | Path) -> dict:
    """The space file, checked, with its defaults and its configs as paths; ValueError naming the
    entry and the fix."""
    if not Path(path).is_file():
        raise ValueError(f"{path}: no such file (the shipped spaces: conf/search/).")
    space = {"config": [], "monitor": "val/acc", "mode": "max", "seed": 0, "params": None}
    space |= yaml.safe_load(Path(path).read_text()) or {}
    bad_mode = space["mode"] not in ("max", "min")
    if len(space) > 5 or not isinstance(space["params"], dict) or bad_mode:
        raise ValueError(
            f"{path}: a space has 'params:' (train.py option -> range), config, monitor, "
            f"mode (max or min) and seed; it has {sorted(space)}."
        )
    trial = optuna.create_study().ask()
    for name, spec in space["params"].items():
        try:
            suggest(trial, {name: spec})
        except (AttributeError, KeyError, TypeError, ValueError) as e:
            raise ValueError(
                f"{path}: {name}: {type(e).__name__}: {e}. A range is {{low: 0.1, high: 10, "
                "log: true} or {type: int, low: 1, high: 8, step: 1}; a choice {choices: [...]}."
            ) from None
    configs = [space["config"]] if isinstance(space["config"], str) else space["config"]
    return space | {"config": [str(config_path(c)) for c in configs]}


def suggest(trial: optuna.Trial, params: dict[str, dict]) -> dict:
    """The trial's value of each ``params`` entry (a retried trial gets its own again)."""
    values = {}
    for name, spec in params.items():
        if set(spec) == {"choices"} and spec["choices"]:
            # Optuna's choices are scalars: a list or mapping (e.g. channels) as its JSON text
            texts = {json.dumps(c) if isinstance(c, list | dict) else c: c for c in spec["choices"]}
            values[name] = texts[trial.suggest_categorical(name, list(texts))]
        elif set(spec) - RANGE:
            raise ValueError(f"unknown keys {sorted(set(spec) - RANGE)} (choices: alone)")
        else:
            suggest_range = trial.suggest_int if spec.get("type") == "int" else trial.suggest_float
            values[name] = suggest_range(name, **{k: v for k, v in spec.items() if k != "type"})
    return values


def check_options(space: dict, train_args: list[str]) -> None:
    """Parse a trial's command line (``train.py fit ... --print_config``) before any trial runs:
    ValueError with train.py's message when an option of the space is not one of its own."""
    example = {n: s.get("choices", [s.get("low")])[0] for n, s in space["params"].items()}
    args = [a for c in space["config"] for a in ("--config", c)] + option_args(example)
    command = [sys.executable, "-c", "from lightning_glif.cli import main; main()", "fit", *args]
    command += [*train_args, "--print_config"]
    done = subprocess.run(command, env=child_env(), capture_output=True, text=True)
    if done.returncode:
        message = done.stderr[done.stderr.rfind("error:") :].strip()
        raise ValueError(f"train.py refuses a trial's options: {message}")


def start(study: optuna.Study, space: dict, train_args: list[str]) -> None:
    """Record the search in its study; refuse a study that holds a grid or another search
    (space, configs or their content, fit arguments)."""
    attrs = {"kind": "search", "space": space, "train_args": train_args}
    attrs["base"] = identity(space["config"], train_args)
    if any(study.user_attrs.get(k, v) != v for k, v in attrs.items()):
        raise ValueError(
            f"study {study.study_name!r} holds another search, or a grid: pass another --study, "
            "or the same options."
        )
    for k, v in attrs.items():
        study.set_user_attr(k, v)


def objective(workers: Workers, study: optuna.Study, trial: optuna.Trial) -> float:
    """A search study's objective: sample the space and run it; its value is the best
    ``monitor`` of the run (on validation, never the test split)."""
    space, train_args = study.user_attrs["space"], study.user_attrs["train_args"]
    spec = {k: space[k] for k in ("monitor", "mode", "seed")} | {"train_args": train_args}
    spec["params"] = suggest(trial, space["params"])
    trial.set_user_attr("options", spec["params"])  # best.yaml's, lists as lists
    spec["identity"] = key = identity(space["config"], **spec)
    spec |= {"configs": space["config"], "dir": f"{study.study_name}/{key[:8]}"}
    return workers.run(trial, spec, f"trial #{trial.number}", "selected_score")


def write_report(study: optuna.Study, out: str | Path) -> bool:
    """``results.md`` (the complete trials, best first; the failed ones' errors) and, when one
    succeeded, ``best.yaml``: its options, an overlay for ``train.py fit --config``. False when
    no trial succeeded."""
    (out := Path(out)).mkdir(parents=True, exist_ok=True)
    space, trials = study.user_attrs["space"], study.get_trials(deepcopy=False)
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    done.sort(key=lambda t: t.value, reverse=space["mode"] == "max")  # best first, ties in order
    lines = [
        f"Search {study.study_name!r}: {len(done)} of {len(trials)} trials complete; value: "
        f"the best {space['monitor']} ({space['mode']}) on validation.",
        "",
        f"| trial | value | {' | '.join(space['params'])} | test acc (%) | run |",
        "|---" * (len(space["params"]) + 4) + "|",
    ]
    for t in done:
        cells = [t.number, t.value, *t.params.values(), 100 * t.user_attrs["result"]["test_acc"]]
        cells = [f"{c:.4g}" if isinstance(c, float) else c for c in cells]
        lines.append(f"| {' | '.join(map(str, cells))} | {t.user_attrs['run_dir']} |")
    if done:
        configs = " ".join(f"--config {c}" for c in space["config"])
        text = f"# the best of search {study.study_name!r}, trial #{done[0].number}: python "
        text += f"train.py fit {configs} --config best.yaml\n"
        text += yaml.safe_dump(done[0].user_attrs["options"], sort_keys=False)
        (out / "best.yaml").write_text(text)
        lines += ["", f"The best trial's options, {out / 'best.yaml'}:", "```yaml", text, "```"]
    else:
        lines += ["", "No trial succeeded, so there is no best.yaml: see the failed trials."]
    for t in trials:
        if error := t.user_attrs.get("error", "").strip().splitlines()[-1:]:
            lines.append(f"- failed trial #{t.number} ({t.user_attrs['run_dir']}): {error[0]}")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    return bool(done)
