"""Train, validate, test or predict with a spiking classifier: a LightningCLI.

    python train.py fit                      # conf/default.yaml: GLIF convnet on the 8x8 digits
    python train.py fit --config conf/experiment/cifar10_resnet19_t4.yaml
    python train.py fit --config conf/neuron/lif.yaml --config conf/debug.yaml
    python train.py test --ckpt_path runs/digits/version_0/checkpoints/last.ckpt
    python train.py fit --print_config       # the resolved config, without running

``conf/default.yaml`` is read first, then each ``--config`` in order, then ``--key value``. A
command writes into ``<trainer.default_root_dir>/<name>/version_<n>/`` (``<name>``: the logger's,
else the data's: ``MNISTDataModule`` -> ``mnist``). :class:`GLIFCLI` lists its rules;
docs/reliability.md says what each refusal, kill and resume does.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
import sys
import warnings
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import ArgumentError, Namespace
from pytorch_lightning.callbacks import LearningRateMonitor
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from pytorch_lightning.utilities import rank_zero_only

from lightning_glif import authors_checkpoints as compat
from lightning_glif.callbacks.interrupt import InterruptCheckpoint
from lightning_glif.callbacks.predictions import PredictionWriter
from lightning_glif.callbacks.run_state import (
    DATA_KEY,
    RunState,
    describe_checkpoint,
    mismatch_error,
    weight_mismatches,
)
from lightning_glif.callbacks.splits import SplitFiles
from lightning_glif.cli.checkpoint_io import (
    CorruptCheckpointError,
    DiskFullError,
    check_checkpoint_file,
    with_atomic_checkpoint_io,
)
from lightning_glif.cli.config import (
    CLASS_KEYS,
    as_list,
    data_values,
    import_class,
    link_data_values,
    name_run_after_data,
    plain,
    reset_carried_options,
    signature_parameters,
)
from lightning_glif.cli.locks import DirectoryLock, DirectoryLocked
from lightning_glif.training.allowlist import (
    UntrustedCheckpointClass,
    check_checkpoint_classes,
    dotted_names,
    lookup,
)
from lightning_glif.training.module import SpikingClassifier

log = logging.getLogger(__name__)
CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
DEFAULT_CONFIG = CONF_DIR / "default.yaml"
DESCRIPTION = (
    "Train and evaluate spiking classifiers (lightning-glif). Every run reads conf/default.yaml "
    "(a GLIF convnet on the 8x8 digits), then each --config in order, then --key value "
    "arguments. Outputs: <trainer.default_root_dir>/<logger name, else the data's>/version_<n>/ "
    "(predict: predictions.pt there). Run a subcommand with --help for its options. A bad value "
    "stops with one message, exit status 2 (JSONARGPARSE_DEBUG=1: the traceback)."
)
PREDICT_DESCRIPTION = (
    "Predict with a model (usually --ckpt_path FILE) on the data's predict split (its test split): "
    "writes <run dir>/predictions.pt, a dict of tensors with one row per sample: 'logits' "
    "[N, num_classes] (time-averaged), 'predicted' [N] (their argmax) and 'target' [N] (the "
    "labels, when the data has them). Load it with torch.load(path, weights_only=True)."
)


class GLIFParser(LightningArgumentParser):
    """jsonargparse's parser, whose errors about unknown keys also list the closest valid ones.
    The hints read jsonargparse's wording (hence ``jsonargparse<5``): where it changes, an error
    comes without hints, never with a wrong one."""

    subcommand_parsers: dict[str, LightningArgumentParser] | None = None

    def add_subcommands(self, *args: Any, **kwargs: Any):
        # The subcommands' parsers by name: their keys, for a config file's unknown key.
        action = super().add_subcommands(*args, **kwargs)
        self.subcommand_parsers = action.choices
        return action

    def error(self, message: str, ex: Exception | None = None):
        return super().error(message + suggestions(message, self), ex)


class RunDirectory:
    """The loggers' one ``save_dir``: the one given, else ``trainer.default_root_dir``.

    jsonargparse applies the link after each parse (the defaults first): a ``save_dir`` equal to
    a ``default_root_dir`` this link filled in before is taken as not given.
    """

    def __init__(self) -> None:
        self.filled: set[str] = set()

    def save_dir(self, default_root_dir: str, logger: Any) -> str:
        inits = [item.get("init_args") for item in as_list(logger) if hasattr(item, "get")]
        given = {i.get("save_dir") for i in inits if isinstance(i, Namespace)}
        given -= {None, *self.filled}
        if len(given) > 1:
            raise ValueError(
                f"trainer.logger: its loggers write one run directory, but their save_dir differ "
                f"({', '.join(sorted(map(str, given)))}): give one save_dir, or none (then "
                "trainer.default_root_dir)."
            )
        if given:
            return given.pop()
        self.filled.add(default_root_dir)
        return default_root_dir


def logger_classes(logger: Any) -> tuple:
    """The class paths of a ``trainer.logger`` value (Namespaces, or dicts from a config.yaml)."""
    return tuple(
        item.get("class_path") if hasattr(item, "get") else item
        for item in as_list(logger)
        if item not in (None, False)
    )


def version_directory(runs: Path, version: Any) -> Path:
    """A logger's ``version`` directory in ``runs`` (``<save_dir>/<name>``; None: ``runs``)."""
    if version is None:
        return runs
    return runs / (f"version_{version}" if isinstance(version, int) else str(version))


def valid_keys(parser: LightningArgumentParser, message: str) -> list[str]:
    """Every key (and dotted prefix: ``model.backbone``) a config may set where ``message`` was
    raised: the top-level parser names the subcommand whose keys it checked."""
    sub = re.search(r"Subcommand '(\w+)'", message)
    if sub and sub.group(1) in (parser.subcommand_parsers or {}):
        parser = parser.subcommand_parsers[sub.group(1)]
    try:
        defaults = parser.get_defaults()
    except ArgumentError:  # a default config that does not parse: its own error says why
        return []
    parts = [key.split(".") for key in defaults.keys() if not key.startswith("__")]
    return sorted({".".join(p[:i]) for p in parts for i in range(1, len(p) + 1)})


def suggestions(message: str, parser: LightningArgumentParser) -> str:
    """Hints for the unknown keys and class options ``message`` names, one per line."""
    hints = []
    # An option of a class given by class_path (a neuron, a backbone, a data module).
    # jsonargparse names them in two forms: after the option, or before it (command line).
    after = re.findall(r"Option '(\w+)' is not accepted.*?class_path='([\w.]+)'", message, re.S)
    before = re.findall(r"class_path '([\w.]+)':\s*Option '(\w+)' is not accepted", message)
    for option, class_path in dict.fromkeys([*after, *((o, c) for c, o in before)]):
        name = class_path.rpartition(".")[2]
        try:
            accepted = [p.name for p in signature_parameters(import_class(class_path))]
        except (ImportError, AttributeError, TypeError, ValueError):
            continue
        close = difflib.get_close_matches(option, accepted, n=3)
        hints.append(
            f"{name} has no option {option!r}"
            + (f"; did you mean {' or '.join(map(repr, close))}?" if close else ".")
            + f" Its options: {', '.join(accepted)}."
        )
    # A key of the config itself (--model.x, or model: x: in a YAML file).
    unknown = re.findall(r"(?:unrecognized arguments: --|not accept option ')([\w.]+)", message)
    keys = valid_keys(parser, message) if unknown else []
    for key in unknown:
        close = difflib.get_close_matches(key, keys, n=3, cutoff=0.75)
        if close:
            hints.append(f"unknown key {key!r}: did you mean {' or '.join(map(repr, close))}?")
    # Nested parsers re-raise their children's errors: add each hint once.
    return "".join(f"\n  {h}" for h in dict.fromkeys(hints) if h not in message)


class RunConfig(SaveConfigCallback):
    """Saves the resolved config in the run directory (a run resumed in place keeps its
    ``config.yaml`` and adds ``config.resume<k>.yaml`` once training starts), and holds the run
    directory's lock (:mod:`.locks`, rank zero) to the end: ``lock``, the CLI's, where it knew
    the directory at parse time, else one taken in ``setup`` (the logger's next free version).
    """

    def __init__(
        self, *args, resuming: bool = False, lock: DirectoryLock | None = None, **kwargs
    ) -> None:
        super().__init__(*args, **kwargs)
        self.resuming = resuming
        self._lock = lock

    def setup(self, trainer, pl_module, stage: str) -> None:
        if self.already_saved:
            return
        if trainer.log_dir:
            self._acquire(trainer, Path(trainer.log_dir))
        if not self.resuming:  # else saved in on_train_start
            super().setup(trainer, pl_module, stage)

    def on_train_start(self, trainer, pl_module) -> None:
        if self.resuming and not self.already_saved and trainer.log_dir:
            k = len(list(Path(trainer.log_dir).glob("config.resume*.yaml"))) + 1
            self.config_filename = f"config.resume{k}.yaml"
            super().setup(trainer, pl_module, "fit")

    def _acquire(self, trainer, run_dir: Path) -> None:
        locked: DirectoryLocked | None = None
        if trainer.is_global_zero and self._lock is None:
            try:
                self._lock = DirectoryLock(run_dir).acquire()
            except DirectoryLocked as error:
                locked = error
        # Every rank stops, not only rank zero (the others would wait for it in the run).
        if message := trainer.strategy.broadcast(str(locked) if locked else None):
            raise locked or RuntimeError(message)

    def teardown(self, trainer, pl_module, stage: str) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self.teardown(trainer, pl_module, "exception")


def run_config_classes(checkpoint: str | Path) -> list[str]:
    """The dotted names in the ``model`` of the ``config.yaml`` of the run that holds
    ``checkpoint`` in its ``checkpoints/`` folder: the classes that run was trained with, so
    trusted for its own checkpoints (a copy elsewhere gets nothing)."""
    folder = Path(checkpoint).resolve().parent
    config = folder.parent / "config.yaml"
    if folder.name != "checkpoints" or not config.is_file():
        return []
    try:
        model = yaml.safe_load(config.read_text()).get("model")
    except (OSError, yaml.YAMLError, AttributeError):  # not a run's config: trusts nothing
        return []
    return [name for _, name in dotted_names(model)]


class GLIFCLI(LightningCLI):
    """LightningCLI with the config rules of :mod:`.config`, resuming in place, checkpoints that
    neither swap the configured model or data silently nor import code the user did not name,
    and bad values refused before anything is written. ``print_config``: the flags of
    ``--print_config[=flags]``, printed after these rules, as the run saves the config.
    """

    def __init__(self, *args: Any, print_config: str | None = None, **kwargs: Any) -> None:
        self.print_config = print_config
        self._lock: DirectoryLock | None = None
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # The loggers (so the checkpoints and config.yaml) write under default_root_dir unless
        # a save_dir is given (jsonargparse's plain link would replace a given one).
        parser.link_arguments(
            ("trainer.default_root_dir", "trainer.logger"),
            "trainer.logger.init_args.save_dir",
            compute_fn=RunDirectory().save_dir,
        )
        parser.add_argument(
            "--model_from_checkpoint",
            type=bool,
            default=False,
            help="With --ckpt_path FILE: build the model the checkpoint stores, ignoring the "
            "model options of the configs and the command line (by default a model option that "
            "differs from the checkpoint's is an error naming both).",
        )
        parser.add_argument(
            "--eval_time_steps",
            type=int | None,
            default=None,
            help="validate/test/predict --ckpt_path FILE: run the checkpoint's model at this "
            "number of time steps T instead of the T it was trained at (for sequence data, the "
            "data's time_steps too).",
        )

    def parse_arguments(self, parser: LightningArgumentParser, args) -> None:
        super().parse_arguments(parser, args)
        sub = self.config.get("subcommand")
        self._explicit = None
        self._user_model: dict[str, Any] = {}
        args = sys.argv[1:] if args is None else args
        if isinstance(args, list):
            # What was given, without the signatures' defaults. conf/default.yaml counts as
            # given: it names the default classes, and a config that only renames the logger
            # (every experiment) does not parse without it.
            at = args.index(sub) + 1 if sub in args else 0
            given = parser.parse_args(
                [*args[:at], "--config", str(DEFAULT_CONFIG), *args[at:]], defaults=False
            )
            self._explicit = given.get(sub) if sub else given
            # The model options the user gave: those that differ from conf/default.yaml's.
            base = parser.parse_args(
                [*([sub] if sub else []), "--config", str(DEFAULT_CONFIG)], defaults=False
            )
            base = (base.get(sub) if sub else base).get("model") or Namespace()
            self._user_model = {
                k: v
                for k, v in (self._explicit.get("model") or Namespace()).items()
                if k not in base or plain(base[k]) != plain(v)
            }
        name_run_after_data(self.config[sub] if sub else self.config, self._explicit)
        self._checkpoint = self._checkpoint_model = self._authors_checkpoint = None
        if sub and self.config[sub].get("ckpt_path"):
            self._read_checkpoint(sub, self.config[sub].ckpt_path)

    def _read_checkpoint(self, sub: str, path: str) -> None:
        """``--ckpt_path``, read once: ``last`` (fit) becomes the file it resumes; ``best``,
        ``last`` outside fit and a path that is no file are errors. Before LightningCLI merges
        the stored model config (importing its classes) they must be the project's, torch's,
        Lightning's, named by the user or by the checkpoint's run. The GLIF authors' files store
        no config: ``self._authors_checkpoint``."""
        if path == "last" and sub == "fit":
            found = self._resume_in_place()
            if found is None:
                return  # another logger: Lightning resolves "last" in its own directory
            path = self.config.fit.ckpt_path = str(found)
        elif path in ("last", "best"):
            resume = ", or resume with fit --ckpt_path last" if path == "last" else ""
            self.parser.error(
                f"--ckpt_path {path}: Lightning's '{path}' is the {path} checkpoint of a fit run "
                "earlier in the same Python process; a command has none. Pass the checkpoint "
                f"file (<run dir>/checkpoints/*.ckpt){resume}."
            )
        elif path == "hpc" or path.startswith("registry") or "://" in path:
            return  # Lightning's own
        elif not Path(path).is_file():
            what = "is a directory" if Path(path).is_dir() else "does not exist"
            self.parser.error(
                f"--ckpt_path {path}: the file {what}. Pass a checkpoint file, or 'last' to "
                "resume the latest run (fit)."
            )
        # --weights_only false (an opt-in, warned about): a checkpoint holding pickled objects.
        weights_only = self.config[sub].get("weights_only") is not False
        try:
            checkpoint = check_checkpoint_file(path, weights_only=weights_only)
        except CorruptCheckpointError as error:
            # The authors' CIFAR10-DVS files ({'net': ...}) are no Lightning checkpoints.
            if not compat.is_authors_file(path, weights_only):
                self.parser.error(str(error))
            checkpoint = None
        if checkpoint is None or compat.is_authors_checkpoint(checkpoint):
            self._authors_checkpoint = Path(path)  # converted in after_instantiate_classes
            return
        hparams = checkpoint.get("hyper_parameters")
        hparams = hparams if isinstance(hparams, dict) else {}
        named = [value for _, value in dotted_names(self._explicit)] if self._explicit else []
        try:
            check_checkpoint_classes(
                hparams,
                path,
                allowed=[*named, *run_config_classes(path)],
                how_to_allow=" where this command reads it: on the command line (e.g. "
                "--model.backbone <class path>) or in a config file you pass (--config). A "
                "checkpoint in its run's checkpoints/ folder may also name the classes of that "
                "run's config.yaml",
            )
        except UntrustedCheckpointClass as error:
            self.parser.error(str(error))
        self._checkpoint = checkpoint
        self._checkpoint_model = {k: v for k, v in hparams.items() if k != "_instantiator"}

    def _resume_in_place(self) -> Path | None:
        """``fit --ckpt_path last``: the ``last.ckpt`` of the latest run (or the version given)
        written by the same logger class, which then goes on there; none is an error (Lightning
        would train from scratch). ``None``: a logger without ``save_dir`` and ``name``."""
        trainer = self.config.fit.trainer
        classes = logger_classes(trainer.get("logger"))
        init = getattr(trainer.get("logger"), "init_args", None)
        if not classes:
            runs, versions = Path(trainer.default_root_dir), [None]
            given = " --trainer.logger false"
        elif init is None or init.get("save_dir") is None or init.get("name") is None:
            return None  # another logger: Lightning resolves "last" in its own directory
        else:
            runs, versions, given = Path(init.save_dir) / str(init.name), [init.version], ""
            if init.version is not None:
                given = f" --trainer.logger.init_args.version {init.version}"
            else:
                found = (d.name.removeprefix("version_") for d in runs.glob("version_*"))
                versions = sorted(int(v) for v in found if v.isdigit())

        def problem(run: Path) -> str | None:
            """Why ``run`` cannot be resumed by this command (None: it can)."""
            if not (run / "checkpoints" / "last.ckpt").is_file():
                return "has no checkpoints/last.ckpt" if run.is_dir() else "does not exist"
            try:
                saved = yaml.safe_load((run / "config.yaml").read_text())["trainer"]["logger"]
            except (OSError, yaml.YAMLError, KeyError, TypeError):
                return None  # no record of its logger: taken as it is
            if logger_classes(saved) == classes:
                return None
            names = ", ".join(str(c).rsplit(".", 1)[-1] for c in logger_classes(saved))
            return f"was written with another logger ({names or 'none'})"

        problems = {v: problem(version_directory(runs, v)) for v in versions}
        ok = [v for v, why in problems.items() if why is None]
        if not ok:
            listed = "; ".join(
                f"{version_directory(runs, v)} {why}"
                for v, why in problems.items()
                if given or why.startswith("was")
            )
            self.parser.error(
                f"--ckpt_path last{given}: no run to resume in {runs} ("
                f"{listed or f'no {runs}/version_<n>/checkpoints/last.ckpt'}). Start a new run "
                "without --ckpt_path, pass a checkpoint file (--ckpt_path PATH), or point at the "
                "run's directory with --trainer.default_root_dir and "
                "--trainer.logger.init_args.name."
            )
        if classes:
            init.version = ok[-1]
        self.save_config_kwargs["resuming"] = True
        return version_directory(runs, ok[-1]) / "checkpoints" / "last.ckpt"

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        # A checkpoint's model config (merged by LightningCLI from `--ckpt_path FILE`) is what
        # was trained: its options are given, not carried over.
        from_checkpoint = self._checkpoint is not None
        if config.get("weights_only") is False:
            warnings.warn(
                "--weights_only false: loading the checkpoint unpickles arbitrary objects, which "
                "runs any code the file holds. Use it only for a checkpoint you made or trust; "
                "this project's checkpoints load with --weights_only true.",
                stacklevel=1,
            )
        self._check_eval_time_steps(config)
        if from_checkpoint and self._checkpoint_model:
            self._check_model_options(config)
        if self._explicit is not None:
            for key in CLASS_KEYS:
                if not (from_checkpoint and key.startswith("model.")):
                    reset_carried_options(config, self._explicit, key)
        try:  # builds the data module: its own checks of its options (batch_size 0, ...)
            linked = link_data_values(config, self._explicit)
        except ValueError as error:  # a value that contradicts the data among them
            self.parser.error(str(error))
        if from_checkpoint:
            self._check_data_values(config, linked)
            if self.subcommand == "fit":
                self._check_schedule(config)
        if self.print_config is not None:
            self._print_config(config)
        self._check_run_directory(config)

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except ValueError as error:  # a class's own check of its arguments
            self.fail(str(error))

    def instantiate_trainer(self, **kwargs: Any):
        # AtomicCheckpointIO, unless the config names another CheckpointIO plugin.
        where = f"{self.subcommand}.trainer" if self.subcommand else "trainer"
        plugins = self.config_init.get(f"{where}.plugins")
        return super().instantiate_trainer(**kwargs, plugins=with_atomic_checkpoint_io(plugins))

    def after_instantiate_classes(self) -> None:
        """A checkpoint's weights must fit the model built. One of the GLIF authors' files is
        converted into it (:mod:`lightning_glif.authors_checkpoints`), which then runs without a
        ``ckpt_path`` (no optimizer or loop state: ``fit`` starts a new run from its weights)."""
        weights = (self._checkpoint or {}).get("state_dict")
        if isinstance(weights, dict) and self.model is not None:
            problems = weight_mismatches(self.model, weights, strict=self.model.strict_loading)
            if problems:
                made_with = describe_checkpoint(self._checkpoint)
                self.fail(str(mismatch_error(self.model, made_with, problems)))
        source = self._authors_checkpoint
        if source is None:
            return
        config = self.config_init[self.subcommand]
        try:
            authors = compat.read_authors_checkpoint(
                source, config.get("weights_only") is not False
            )
            self.model.backbone.load_state_dict(compat.convert_state_dict(authors, self.model))
        except (compat.AuthorsCheckpointMismatch, compat.NotAuthorsCheckpoint) as error:
            self.fail(f"--ckpt_path {source}: {error}")
        config["ckpt_path"] = None
        log.info("%s: the weights of the authors' checkpoint %s", self.subcommand, source)

    def before_fit(self) -> None:
        """``--trainer.logger false``: Lightning's LearningRateMonitor would stop the run (it
        only writes to a logger): it is left out, with one warning."""
        if self.trainer.loggers:
            return
        kept = [c for c in self.trainer.callbacks if not isinstance(c, LearningRateMonitor)]
        if len(kept) < len(self.trainer.callbacks):
            warnings.warn(
                "no logger (trainer.logger false): LearningRateMonitor is left out (it writes "
                "only to a logger).",
                stacklevel=1,
            )
            self.trainer.callbacks = kept

    def fail(self, message: str) -> None:
        """``parser.error``, after releasing the run directory's lock if this command took it."""
        if self._lock is not None:
            self._lock.release()
        self.parser.error(message)

    def _print_config(self, config: Namespace) -> None:
        # jsonargparse's flags: skip_default, skip_unset (skip_null, its old name), comments.
        names = {"skip_null": "skip_unset", "comments": "with_comments"}
        flags = {names.get(f, f): True for f in self.print_config.split(",") if f}
        parser = (self.parser.subcommand_parsers or {}).get(self.subcommand, self.parser)
        sys.stdout.write(parser.dump(config, **{"skip_unset": False, **flags}))
        sys.exit(0)

    def _check_run_directory(self, config: Namespace) -> None:
        """The roots must be (or be creatable as) writable directories; a run directory known now
        (a resume, a fixed version, no logger) must hold no other run, and is locked here (the
        loggers write before any callback runs)."""
        trainer = config.trainer
        logger = trainer.get("logger")
        roots = {"--trainer.default_root_dir": trainer.get("default_root_dir") or os.getcwd()}
        for item in as_list(logger):
            save_dir = item.get("init_args", {}).get("save_dir") if hasattr(item, "get") else None
            if save_dir is not None:
                roots["--trainer.logger.init_args.save_dir"] = save_dir
        for option, root in roots.items():
            existing = Path(root).absolute()
            while not existing.exists() and existing.parent != existing:
                existing = existing.parent
            if not existing.is_dir():
                self.parser.error(f"{option} {root}: {existing} is a file, not a directory.")
            if not os.access(existing, os.W_OK | os.X_OK):
                self.parser.error(
                    f"{option} {root}: {existing} is not writable by this user: choose a "
                    "directory you can write."
                )
        init = getattr(logger, "init_args", None)
        if not logger_classes(logger):
            run = Path(trainer.get("default_root_dir") or os.getcwd())
        elif init is not None and init.get("version") is not None and init.get("name"):
            run = version_directory(Path(init.save_dir) / str(init.name), init.version)
        else:
            return  # the logger's next free version: RunConfig locks it when the run starts
        if not self.save_config_kwargs.get("resuming") and (run / "config.yaml").is_file():
            given = "--trainer.logger false"
            instead = "Without a logger the run directory is trainer.default_root_dir itself: pass "
            instead += "another --trainer.default_root_dir"
            if logger_classes(logger):
                given = f"--trainer.logger.init_args.version {init.version}"
                instead = "Pick a version that does not exist yet (or leave it unset: the next one)"
            if (run / "checkpoints" / "last.ckpt").is_file():
                instead += f", or continue that run with `fit --ckpt_path last {given}`"
            self.parser.error(
                f"{run} already holds a run (its config.yaml exists), which {given} names: "
                f"stopped to avoid overwriting its outputs. {instead}."
            )
        if getattr(rank_zero_only, "rank", 0) == 0 and run.is_dir():
            try:
                self._lock = DirectoryLock(run).acquire()
            except DirectoryLocked as error:
                self.parser.error(str(error))
            self.save_config_kwargs["lock"] = self._lock

    # -- the checkpoint's model and data against the configured ones ------------------------------
    def _check_eval_time_steps(self, config: Namespace) -> None:
        steps = config.get("eval_time_steps")
        if steps is None:
            return
        if self._authors_checkpoint is not None:
            self.parser.error(
                f"--eval_time_steps with the authors' checkpoint {self._authors_checkpoint}: it "
                "runs at the T it was trained at (its conductance has one value per step). Drop "
                "--eval_time_steps and configure that T."
            )
        if self.subcommand not in ("validate", "test", "predict") or self._checkpoint is None:
            self.parser.error(
                f"--eval_time_steps {steps} evaluates a trained model at another T: it takes "
                "validate, test or predict with --ckpt_path FILE. To build a model at another T, "
                "set --model.backbone.init_args.time_steps (or the data's time_steps)."
            )
        init = config.model.get("backbone", Namespace()).get("init_args")
        if not isinstance(init, Namespace) or "time_steps" not in init:
            self.parser.error(f"--eval_time_steps {steps}: the checkpoint's backbone has no T.")
        init.time_steps = steps
        data = config.get("data")
        if isinstance(data, Namespace) and "time_steps" in (data.get("init_args") or {}):
            data.init_args.time_steps = steps  # sequence data: the data's T is the model's

    def _check_model_options(self, config: Namespace) -> None:
        """A model option given in a config or on the command line that contradicts the
        checkpoint's stored model is an error naming both (LightningCLI would replace it with
        the checkpoint's without a word), unless ``--model_from_checkpoint true``."""
        steps = config.get("eval_time_steps")
        differ = []
        for key, value in self._user_model.items():
            if key == "compile":  # how the model runs, not what it is: the command's value
                config.model[key] = value
                continue
            found, stored = lookup(self._checkpoint_model, key)
            if not found or plain(stored) == plain(value):
                continue
            if key == "backbone.init_args.time_steps" and steps is not None and value == steps:
                continue
            differ.append((key, value, stored))
        if not differ:
            return
        listed = "; ".join(f"model.{k} = {v!r} (the checkpoint's: {c!r})" for k, v, c in differ)
        if config.get("model_from_checkpoint"):
            warnings.warn(
                f"--model_from_checkpoint: the checkpoint's model is built; ignored {listed}.",
                stacklevel=1,
            )
            return
        stored = describe_checkpoint({"hyper_parameters": self._checkpoint_model})
        time_hint = ""
        if any(k == "backbone.init_args.time_steps" for k, _, _ in differ):
            time_hint = (
                " To evaluate the trained model at another T, use validate/test/predict "
                "--eval_time_steps T."
            )
        self.parser.error(
            f"--ckpt_path {config.ckpt_path}: the checkpoint holds {stored}, and the configured "
            f"model differs: {listed}. Drop those options (configs or "
            "command line) to use the checkpoint's model, or pass --model_from_checkpoint true "
            f"to build the checkpoint's model and ignore them.{time_hint}"
        )

    def _check_data_values(self, config: Namespace, linked: dict[str, Any]) -> None:
        """The data's values (classes, channels, image size, features, a sequence's T) must be
        those of the data the checkpoint was trained on, as RunState recorded them (without that
        record: those its model was built with, of the ``linked`` values)."""
        record = (self._checkpoint or {}).get(DATA_KEY)
        if isinstance(record, dict):
            trained_on, trained = record.get("data"), dict(record.get("values", {}))
            values = data_values(config)
        else:
            trained_on, trained, values = "data", {}, {}
            for key, value in linked.items():
                found, stored = lookup(self._checkpoint_model or {}, key.removeprefix("model."))
                if found:
                    name = key.rsplit(".", 1)[-1]
                    trained[name], values[name] = plain(stored), value
        steps = config.get("eval_time_steps")
        if steps is not None and values.get("time_steps") == steps:
            values["time_steps"] = trained.get("time_steps")
        if values == trained:
            return
        run_config = Path(config.ckpt_path).resolve().parent.parent / "config.yaml"
        hint = " Pass the data the checkpoint was trained on"
        hint += f" (its run's config: --config {run_config})." if run_config.is_file() else "."
        differ = [k for k in values if values[k] != trained.get(k)]
        if differ == ["time_steps"] and self.subcommand != "fit":
            hint = f" To evaluate it at T = {values['time_steps']}, add --eval_time_steps "
            hint += f"{values['time_steps']}."
        self.parser.error(
            f"--ckpt_path {config.ckpt_path}: the checkpoint was trained on {trained_on} "
            f"({listed_values(trained)}), but this command's data, "
            f"{config.data.class_path.rsplit('.', 1)[-1]}, has {listed_values(values)}.{hint}"
        )

    def _check_schedule(self, config: Namespace) -> None:
        """A resumed fit restores the default cosine schedule over the first ``max_epochs``:
        another ``max_epochs`` would not stretch it (not checked: ``lr_interval: step``)."""
        hparams = self._checkpoint_model or {}
        if hparams.get("lr_scheduler", "") is not None or hparams.get("lr_interval") == "step":
            return
        schedulers = (self._checkpoint or {}).get("lr_schedulers") or [{}]
        period, epochs = schedulers[0].get("T_max"), config.trainer.get("max_epochs")
        if period is None or epochs is None or max(1, epochs) == period:
            return
        self.parser.error(
            f"--ckpt_path {config.ckpt_path} with --trainer.max_epochs {epochs}: the checkpoint's "
            f"cosine learning-rate schedule runs over {period} epochs and is restored as it is "
            f"(not stretched): epochs past {period} would train at a rate rising again from 0. "
            f"Resume with --trainer.max_epochs {period}, or train {epochs} epochs in a new run "
            "(without --ckpt_path)."
        )


def listed_values(values: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in values.items())


def resolve_config_paths(args: list[str]) -> list[str]:
    """``--config conf/...`` names the shipped configs from any directory: a relative path that
    does not exist where the command runs is looked up in the installed ``lightning_glif/conf``."""
    out = list(args)
    for i, arg in enumerate(out):
        if arg == "--config" and i + 1 < len(out):
            j, path = i + 1, out[i + 1]
        elif arg.startswith("--config="):
            j, path = i, arg.split("=", 1)[1]
        else:
            continue
        shipped = CONF_DIR.parent / path
        if path.startswith("conf/") and not Path(path).exists() and shipped.is_file():
            out[j] = str(shipped) if j != i else f"--config={shipped}"
            path = str(shipped)
        if Path(path).is_file():
            try:
                yaml.safe_load(Path(path).read_text())
            except yaml.YAMLError as error:  # jsonargparse's message names "<unicode string>"
                sys.stderr.write(f"error: --config {path} is not valid YAML: {error}\n")
                sys.exit(2)
    return out


def cli_main(
    args: list[str] | None = None, run: bool = True, callbacks: list | None = None
) -> GLIFCLI:
    """Run the CLI on ``args`` (``None``: the command line) and return it. ``run=False`` only
    builds ``model``, ``datamodule`` and ``trainer`` (``args`` without a subcommand);
    ``callbacks`` are added to the configured ones (the sweeps add theirs)."""
    argv = resolve_config_paths(sys.argv[1:] if args is None else args)
    # --print_config[=flags] is GLIFCLI's: it prints after its rules (jsonargparse's, before).
    flags = [a.partition("=")[2] for a in argv if a.partition("=")[0] == "--print_config"]
    argv = [a for a in argv if a.partition("=")[0] != "--print_config"]
    if args is None:  # LightningCLI reads sys.argv (it warns if given both)
        sys.argv[1:] = argv
    else:
        args = argv
    defaults = {"default_config_files": [str(DEFAULT_CONFIG)]}
    parser_kwargs = {**defaults, "description": DESCRIPTION}
    if run:
        parser_kwargs = {s: dict(defaults) for s in ("fit", "validate", "test", "predict")}
        parser_kwargs |= {"description": DESCRIPTION}
        parser_kwargs["predict"]["description"] = PREDICT_DESCRIPTION
    return GLIFCLI(
        SpikingClassifier,
        subclass_mode_data=True,
        auto_configure_optimizers=False,  # the module owns its optimizer (parameter groups)
        parser_kwargs=parser_kwargs,
        parser_class=GLIFParser,
        save_config_callback=RunConfig,
        save_config_kwargs={"overwrite": False},
        trainer_defaults={  # callbacks of every run, which no config removes
            "callbacks": [
                RunState(),  # RNG states and the model check of checkpoints
                InterruptCheckpoint(),  # Ctrl-C / SIGTERM in fit: stop after the batch, last.ckpt
                PredictionWriter(),  # predict: <run dir>/predictions.pt
                SplitFiles(),  # data with a split manifest: <run dir>/splits/
                *(callbacks or []),
            ]
        },
        run=run,
        args=args,
        print_config=flags[-1] if flags else None,
    )


def main() -> None:
    """The ``lightning-glif`` console script and ``python train.py``: a damaged checkpoint, a
    full disk or a run directory in use met while running is one line, exit status 1."""
    try:
        cli_main()
    except (CorruptCheckpointError, DiskFullError, DirectoryLocked) as error:
        if os.environ.get("JSONARGPARSE_DEBUG"):
            raise
        sys.exit(f"error: {error}")
