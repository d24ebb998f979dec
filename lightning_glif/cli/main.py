"""Train, validate, test or predict with a spiking classifier: a LightningCLI.

    python train.py fit                      # conf/default.yaml: GLIF convnet on the 8x8 digits
    python train.py fit --config conf/experiment/cifar10_resnet19_t4.yaml
    python train.py fit --config conf/neuron/lif.yaml --config conf/debug.yaml
    python train.py test --ckpt_path runs/digits/version_0/checkpoints/last.ckpt
    python train.py fit --print_config       # the resolved config, without running

``python train.py fit`` trains the GLIF convnet for 12 epochs on the 8x8 digits (README.md,
"Training", says what it costs and reaches).

``conf/default.yaml`` is always read first; every ``--config`` after it overrides what it names,
later files win, and ``--key value`` arguments win over all files. Experiment configs first,
then overlays (``conf/neuron/*.yaml``, ``conf/debug.yaml``).

Each command writes into one run directory, ``<trainer.default_root_dir>/<name>/version_<n>/``
(default ``runs/digits/version_0/``, the next free version): the TensorBoard logs (``tensorboard
--logdir runs``), the resolved ``config.yaml`` and ``checkpoints/`` (the best epoch on
``val/acc`` and ``last.ckpt``, the latest). Choose the root with ``--trainer.default_root_dir``
and the name with ``--trainer.logger.init_args.name``. A config already in the directory (a
fixed ``version``) is an error, never overwritten.

``test``/``validate``/``predict --ckpt_path FILE`` rebuild the model from the checkpoint (its
config is stored in it); the data comes from the configs given, so pass the same ``--config`` as
for ``fit``: data of another kind or shape than the checkpoint was trained on is an error naming
both, before anything runs. A model option given in a config or on the command line that differs
from the checkpoint's model is an error naming both (also for ``fit --ckpt_path FILE`` and
``fit --ckpt_path last``): ``--model_from_checkpoint true`` builds the checkpoint's model and
ignores them; ``--eval_time_steps T`` (validate/test/predict) runs the trained model at another
number of time steps. The class paths stored in a checkpoint are only imported from
``lightning_glif``, ``torch``, ``pytorch_lightning`` or classes named in the configs or options
given (checked before any import). ``predict`` writes ``<run dir>/predictions.pt`` (``logits``,
``predicted``, ``target``) and says where. A command holds its run directory's ``.lock`` while it
runs: a second command on the same run stops, naming the holder's pid.

Resuming (weights, optimizer, schedule, epoch and step, RNG states): ``fit --ckpt_path last``
continues the latest run of ``<save_dir>/<name>/`` written by the same logger class, in its own
directory, from its ``checkpoints/last.ckpt`` (``--trainer.logger.init_args.version N`` picks run
``version_N``; without a logger, ``--trainer.logger false``, the run directory is
``default_root_dir`` itself); pass the same options as the first time: another ``max_epochs``
would not stretch the restored learning-rate schedule and is an error. No run with a
``last.ckpt`` there (or none at the given version) is an error, not a fresh start. The original
``config.yaml`` is kept, the resumed command's config is saved beside it as
``config.resume<k>.yaml`` once training starts. ``fit --ckpt_path .../last.ckpt`` resumes from
that file into a new version directory. Other loggers (``save_dir``/``name`` unknown to this CLI)
resolve ``last`` in Lightning's own checkpoint directory, without these checks.

A bad value (an option out of range, a missing or damaged checkpoint, a config file that is not
YAML, a ``default_root_dir`` that cannot be written) stops with one message naming it and exit
status 2, before anything is written; ``JSONARGPARSE_DEBUG=1`` shows the traceback.
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
    data_values,
    import_class,
    link_data_values,
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
#: Model options that change how a model runs, not what it is: a checkpoint's stored value
#: never overrides the command's, and a different value is no model mismatch.
RUN_OPTIONS = ("compile",)
CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
DEFAULT_CONFIG = CONF_DIR / "default.yaml"
DESCRIPTION = (
    "Train and evaluate spiking classifiers (lightning-glif). Every run reads conf/default.yaml "
    "(a GLIF convnet on the embedded 8x8 digits), then each --config in order, then --key value "
    "arguments. Outputs go to <trainer.default_root_dir>/<logger name>/version_<n>/; predict "
    "writes its predictions there, as predictions.pt (logits, predicted class, target). "
    "Run a subcommand with --help for its options. A bad value stops with one message and exit "
    "status 2; set the environment variable JSONARGPARSE_DEBUG=1 to see the traceback."
)
PREDICT_DESCRIPTION = (
    "Predict with a model (usually --ckpt_path FILE) on the data's predict split (its test split): "
    "writes <run dir>/predictions.pt, a dict of tensors with one row per sample: 'logits' "
    "[N, num_classes] (time-averaged), 'predicted' [N] (their argmax) and 'target' [N] (the "
    "labels, when the data has them). Load it with torch.load(path, weights_only=True)."
)


class GLIFParser(LightningArgumentParser):
    """jsonargparse's parser, whose errors about unknown keys also list the closest valid ones
    (its errors about values already name the key and the allowed choices).

    The hints read jsonargparse's error wording (hence ``jsonargparse<5`` in the requirements):
    where that wording changes, an error comes without hints, never with a wrong one.
    """

    subcommand_parsers: dict[str, LightningArgumentParser] | None = None

    def add_subcommands(self, *args: Any, **kwargs: Any):
        # Kept to list a subcommand's keys when this (top-level) parser reports a config file's
        # unknown key: the subcommand action's choices are its parsers by name.
        action = super().add_subcommands(*args, **kwargs)
        self.subcommand_parsers = action.choices
        return action

    def error(self, message: str, ex: Exception | None = None):
        return super().error(message + suggestions(message, self), ex)


class RunDirectory:
    """The ``save_dir`` of the loggers: the one given, else ``trainer.default_root_dir``.

    jsonargparse applies the link after each parse it makes (the defaults first), so a
    ``save_dir`` that this link filled in earlier is told apart from a given one by its value:
    a given ``save_dir`` equal to a ``default_root_dir`` seen before is taken as not given.
    Loggers in a list share one run directory, so they share one ``save_dir``.
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


def as_list(value: Any) -> list:
    return value if isinstance(value, list) else [value]


def logger_classes(logger: Any) -> tuple:
    """The class paths of a ``trainer.logger`` value (a Namespace or, from a saved config.yaml,
    a dict; a list of them; ``True``; ``False``/``None``: none)."""
    return tuple(
        item.get("class_path") if hasattr(item, "get") else item
        for item in as_list(logger)
        if item not in (None, False)
    )


def valid_keys(parser: LightningArgumentParser, message: str) -> list[str]:
    """Every key a config may set where ``message`` was raised, from a parse of the defaults
    (``conf/default.yaml`` included, so its classes' options are there), with each dotted prefix
    (``model.backbone``). The top-level parser names the subcommand whose keys it checked."""
    sub = re.search(r"Subcommand '(\w+)'", message)
    if sub and sub.group(1) in (parser.subcommand_parsers or {}):
        parser = parser.subcommand_parsers[sub.group(1)]
    try:
        defaults = parser.get_defaults()
    except ArgumentError:  # a default config that does not parse: its own error says why
        return []
    keys = set()
    for key in defaults.keys():
        parts = key.split(".")
        keys.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return sorted(k for k in keys if not k.startswith("__"))


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
    """Saves the resolved config in the run directory; a run resumed in place (``--ckpt_path
    last``) keeps the original ``config.yaml`` and adds ``config.resume<k>.yaml`` when training
    starts (a resume refused while its checkpoint is restored writes none).

    It also holds the run directory's lock (:mod:`lightning_glif.cli.locks`, on rank zero)
    to the end of the run: a second command on the same run directory stops naming the holder's
    pid. The CLI takes the lock before the trainer exists where the directory is known then (a
    resume, a fixed version, no logger) and hands it over as ``lock``; otherwise (the logger's
    next free version, known only when the trainer runs) it is taken in ``setup``, before this
    callback writes there.
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
        log_dir = trainer.log_dir
        if log_dir:
            self._acquire(trainer, Path(log_dir))
        if self.resuming:
            return  # saved in on_train_start
        if log_dir and not self.overwrite:
            # Lightning's own check says what to change in code: this one says what to type.
            exists = trainer.is_global_zero and (Path(log_dir) / self.config_filename).is_file()
            if trainer.strategy.broadcast(exists):
                logged = bool(trainer.loggers)
                version = getattr(trainer.logger, "version", None)
                raise RuntimeError(existing_run_message(Path(log_dir), logged, version))
        super().setup(trainer, pl_module, stage)

    def on_train_start(self, trainer, pl_module) -> None:
        if self.resuming and not self.already_saved and trainer.log_dir:
            k = 1
            while (Path(trainer.log_dir) / f"config.resume{k}.yaml").exists():
                k += 1
            self.config_filename = f"config.resume{k}.yaml"
            super().setup(trainer, pl_module, "fit")

    def _acquire(self, trainer, run_dir: Path) -> None:
        locked: DirectoryLocked | None = None
        if trainer.is_global_zero and self._lock is None:
            try:
                self._lock = DirectoryLock(run_dir, what="run directory").acquire()
            except DirectoryLocked as error:
                locked = error
        # Every rank stops, not only rank zero (the others would wait for it in the run).
        problem = trainer.strategy.broadcast(str(locked) if locked else None)
        if locked is not None:
            raise locked
        if problem:
            raise RuntimeError(problem)

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self._release()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._release()


def existing_run_message(run_dir: Path, logged: bool, version: Any) -> str:
    """Why a command stops on a run directory that holds a run, and what to type instead."""
    if logged:
        option = "--trainer.logger.init_args.version"
        given = f"{option} {version}" if version is not None else option
        instead = (
            f"Pick a version that does not exist yet (or leave {option} unset: the next free "
            "version is used)"
        )
    else:
        given = "--trainer.logger false"
        instead = (
            "Without a logger the run directory is trainer.default_root_dir itself: pass "
            "another --trainer.default_root_dir"
        )
    resume = ""
    if (run_dir / "checkpoints" / "last.ckpt").is_file():
        resume = f", or continue that run with `fit --ckpt_path last {given}`"
    return (
        f"{run_dir} already holds a run (its config.yaml exists), which {given} names: "
        f"stopped to avoid overwriting its outputs. {instead}{resume}."
    )


class GLIFCLI(LightningCLI):
    """LightningCLI with the values the data knows set once, configs that do not leak into other
    classes, resuming in place, checkpoints that neither swap the configured model or data
    silently nor import code the user did not name, and bad values refused before anything is
    written.

    ``print_config``: the flags of a ``--print_config[=flags]`` that :func:`cli_main` took off
    the command line: the config is printed after this class's rules (the data's values linked,
    options carried over reset, a checkpoint's model merged), as the run saves it, not as
    jsonargparse parsed it.
    """

    def __init__(self, *args: Any, print_config: str | None = None, **kwargs: Any) -> None:
        self.print_config = print_config
        self._lock: DirectoryLock | None = None
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # One run directory: the loggers (and so the checkpoints and the saved config) write
        # under trainer.default_root_dir, unless a save_dir is given (jsonargparse's plain link
        # would replace a given one without a word).
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
            # What was given, without the signatures' defaults (jsonargparse cannot tell them
            # apart after parsing). conf/default.yaml is read as given: it names the default
            # classes and sets nothing a signature already sets, and without it a config that
            # only renames the logger (every experiment) would not parse.
            at = args.index(sub) + 1 if sub in args else 0
            given = parser.parse_args(
                [*args[:at], "--config", str(DEFAULT_CONFIG), *args[at:]], defaults=False
            )
            self._explicit = given.get(sub) if sub else given
            # The model options the user gave: those that differ from conf/default.yaml's
            # (a value equal to the default config's cannot be told apart from it).
            base = parser.parse_args(
                [*([sub] if sub else []), "--config", str(DEFAULT_CONFIG)], defaults=False
            )
            base = (base.get(sub) if sub else base).get("model") or Namespace()
            self._user_model = {
                k: v
                for k, v in (self._explicit.get("model") or Namespace()).items()
                if k not in base or plain(base[k]) != plain(v)
            }
        self._authors_checkpoint: Path | None = None
        if sub:
            self._resolve_ckpt_path(sub)
        self._checkpoint = self._read_checkpoint()
        self._checkpoint_model = self._check_checkpoint_classes(self._checkpoint)

    def _resolve_ckpt_path(self, sub: str) -> None:
        """``--ckpt_path last`` (fit) becomes the file it resumes, so that it gets every check a
        file gets; ``best``, ``last`` outside fit and a path that is no file are errors."""
        path = self.config[sub].get("ckpt_path")
        if path == "last" and sub == "fit":
            found = self._resume_in_place()
            if found is not None:
                self.config.fit.ckpt_path = str(found)
        elif path in ("last", "best"):
            resume = (
                ", or resume the latest run with fit --ckpt_path last" if path == "last" else ""
            )
            self.parser.error(
                f"--ckpt_path {path}: Lightning's '{path}' is the {path} checkpoint of a fit run "
                "earlier in the same Python process; a command has none. Pass the checkpoint "
                f"file (<run dir>/checkpoints/*.ckpt){resume}."
            )
        elif path and path != "hpc" and not path.startswith("registry") and "://" not in path:
            if Path(path).is_file():
                return
            what = "is a directory" if Path(path).is_dir() else "does not exist"
            self.parser.error(
                f"--ckpt_path {path}: the file {what}. Pass a checkpoint file, or 'last' to "
                "resume the latest run (fit)."
            )

    def after_instantiate_classes(self) -> None:
        """A checkpoint's weights must fit the model built (RunState checks it again when
        Lightning loads them, after the run has started writing: here it is before).

        The GLIF authors' checkpoint (``--ckpt_path`` one of their files): its weights are
        converted into the configured model (:mod:`lightning_glif.authors_checkpoints`), which
        then runs as built, without a ``ckpt_path``: the file holds no optimizer or loop state, so
        ``fit`` starts a new run from its weights."""
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
        weights_only = config.get("weights_only") is not False
        try:
            authors = compat.read_authors_checkpoint(source, weights_only)
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
                UserWarning,
                stacklevel=1,
            )
            self.trainer.callbacks = kept

    def _read_checkpoint(self) -> dict[str, Any] | None:
        """The ``--ckpt_path FILE`` checkpoint (tensors memory-mapped), read once, before
        LightningCLI merges its stored config: a file that is no checkpoint (empty,
        truncated, text, another pickle) is one error naming the file, what is wrong and the
        intact checkpoint beside it (not a bare EOFError / UnpicklingError / KeyError). ``None``
        without a file (``last``, ``best``, no ``--ckpt_path``) and for one of the GLIF authors'
        files (then ``self._authors_checkpoint``)."""
        sub = self.config.get("subcommand")
        path = self.config[sub].get("ckpt_path") if sub else None
        if not path or not Path(path).is_file():
            return None
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
            # One of the GLIF authors' released files: it stores no model config, so the
            # configured model is built and the file converted into it before the run
            # (:meth:`after_instantiate_classes`).
            self._authors_checkpoint = Path(path)
            return None
        return checkpoint

    def instantiate_trainer(self, **kwargs: Any):
        # Checkpoints saved atomically in their own directory, unreadable ones reported by name
        # (lightning_glif.cli.checkpoint_io), unless the config names another CheckpointIO plugin.
        where = f"{self.subcommand}.trainer" if self.subcommand else "trainer"
        plugins = self.config_init.get(f"{where}.plugins")
        return super().instantiate_trainer(**kwargs, plugins=with_atomic_checkpoint_io(plugins))

    def _check_checkpoint_classes(self, checkpoint: dict[str, Any] | None) -> dict[str, Any] | None:
        """Before LightningCLI merges a checkpoint's stored model config (which imports every
        class path in it): its class paths must be the project's, torch's, Lightning's or named
        by the user. Returns the stored model config (None: no file)."""
        if checkpoint is None:
            return None
        path = self.config[self.config.subcommand].ckpt_path
        hparams = checkpoint.get("hyper_parameters") or {}
        if not isinstance(hparams, dict):
            hparams = {}
        named = [value for _, value in dotted_names(self._explicit)] if self._explicit else []
        try:
            check_checkpoint_classes(
                hparams,
                path,
                allowed=named,
                how_to_allow=" where this command reads it: on the command line (e.g. "
                "--model.backbone <class path>) or in a config file you pass (--config)",
            )
        except UntrustedCheckpointClass as error:
            self.parser.error(str(error))
        return {k: v for k, v in hparams.items() if k != "_instantiator"}

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        # A checkpoint's model config (merged by LightningCLI from `--ckpt_path FILE`) is what
        # was trained: its options are given, not carried over.
        from_checkpoint = bool(config.get("ckpt_path")) and Path(config.ckpt_path).is_file()
        if self._authors_checkpoint is not None:
            if config.get("eval_time_steps") is not None:
                self.parser.error(
                    f"--eval_time_steps with the authors' checkpoint {self._authors_checkpoint}: "
                    "it runs at the T it was trained at (its conductance has one value per step). "
                    "Drop --eval_time_steps and configure that T."
                )
            from_checkpoint = False  # no stored model config: the configured model is built
        if config.get("weights_only") is False:
            warnings.warn(
                "--weights_only false: loading the checkpoint unpickles arbitrary objects, which "
                "runs any code the file holds. Use it only for a checkpoint you made or trust; "
                "this project's checkpoints load with --weights_only true.",
                UserWarning,
                stacklevel=1,
            )
        self._check_eval_time_steps(config, from_checkpoint)
        if from_checkpoint and self._checkpoint_model:
            self._check_model_options(config)
        if self._explicit is not None:
            for key in CLASS_KEYS:
                if not (from_checkpoint and key.startswith("model.")):
                    reset_carried_options(config, self._explicit, key)
        try:  # builds the data module: its own checks of its options (batch_size 0, ...)
            linked = link_data_values(config, self._explicit)
        except ValueError as error:  # ConfigConflict among them
            self.parser.error(str(error))
        if from_checkpoint:
            if self._checkpoint_model:
                self._check_linked_values(config, linked)
            self._check_data_values(config)
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
        """Before anything is written: the directories the command writes into must be (or be
        creatable as) writable directories, and a run directory known now (a resume, a fixed
        version, no logger) must not hold another run nor be in use; its lock is then taken
        here, so that a refused command leaves no file in it (Lightning's loggers write their
        first file before any callback runs)."""
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
            version = init.version
            run = Path(init.save_dir) / str(init.name)
            run = run / (f"version_{version}" if isinstance(version, int) else str(version))
        else:
            return  # the logger's next free version: RunConfig locks it when the run starts
        resuming = self.save_config_kwargs.get("resuming", False)
        if not resuming and (run / "config.yaml").is_file():
            version = init.get("version") if init is not None else None
            self.parser.error(existing_run_message(run, bool(logger_classes(logger)), version))
        if getattr(rank_zero_only, "rank", 0) == 0 and run.is_dir():
            try:
                self._lock = DirectoryLock(run, what="run directory").acquire()
            except DirectoryLocked as error:
                self.parser.error(str(error))
            self.save_config_kwargs["lock"] = self._lock

    # -- the checkpoint's model against the configured one -----------------------------------------
    def _check_eval_time_steps(self, config: Namespace, from_checkpoint: bool) -> None:
        steps = config.get("eval_time_steps")
        if steps is None:
            return
        if self.subcommand not in ("validate", "test", "predict") or not from_checkpoint:
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
        for key in RUN_OPTIONS:  # how the model runs, not what it is: the command's value wins
            if key in self._user_model:
                config.model[key] = self._user_model[key]
        differ = []
        for key, value in self._user_model.items():
            if key in RUN_OPTIONS:
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
                UserWarning,
                stacklevel=1,
            )
            return
        configured = config.model.clone()  # the checkpoint's model, as LightningCLI merged it
        for key, value, _ in differ:
            configured[key] = value
        time_hint = ""
        if any(k == "backbone.init_args.time_steps" for k, _, _ in differ):
            time_hint = (
                " To evaluate the trained model at another T, use validate/test/predict "
                "--eval_time_steps T."
            )
        stored = describe_checkpoint({"hyper_parameters": self._checkpoint_model})
        mine = describe_checkpoint({"hyper_parameters": configured.as_dict()})
        models = (
            f"the checkpoint holds {stored}, the configured model is {mine}"
            if mine != stored
            else f"the checkpoint holds {stored}, and the configured model differs from it"
        )
        self.parser.error(
            f"--ckpt_path {config.ckpt_path}: {models}: {listed}. Drop those options (configs or "
            "command line) to use the checkpoint's model, or pass --model_from_checkpoint true "
            f"to build the checkpoint's model and ignore them.{time_hint}"
        )

    def _check_linked_values(self, config: Namespace, linked: dict[str, Any]) -> None:
        """The values the data sets (classes, channels, image size, a sequence's T) must be
        those the checkpoint's model was built with."""
        steps = config.get("eval_time_steps")
        data_name = str(config.data.class_path).rsplit(".", 1)[-1]
        for key, value in linked.items():
            found, stored = lookup(self._checkpoint_model, key.removeprefix("model."))
            if not found or plain(stored) == plain(value):
                continue
            name = key.rsplit(".", 1)[-1]
            if name == "time_steps" and steps is not None and value == steps:
                continue
            hint = (
                f" To evaluate it at T = {value}, add --eval_time_steps {value}."
                if name == "time_steps" and self.subcommand != "fit"
                else " Use the data the checkpoint was trained on (pass the run's config)."
            )
            self.parser.error(
                f"--ckpt_path {config.ckpt_path}: the checkpoint's model was built with "
                f"{name} = {stored!r}, the data ({data_name}) has {name} = {value!r}.{hint}"
            )

    def _check_data_values(self, config: Namespace) -> None:
        """The data's values (:meth:`shared_values`: classes, channels, image size, features,
        a sequence's T) must be those of the data the checkpoint was trained on, as
        :class:`~lightning_glif.callbacks.run_state.RunState` recorded them (checkpoints written
        before it did are checked on the model's values only)."""
        record = (self._checkpoint or {}).get(DATA_KEY)
        if not isinstance(record, dict):
            return
        trained, values = record.get("values", {}), data_values(config)
        steps = config.get("eval_time_steps")
        if steps is not None and values.get("time_steps") == steps:
            values = {**values, "time_steps": trained.get("time_steps")}
        if values == trained:
            return

        def listed(values: dict) -> str:
            return ", ".join(f"{k} {v}" for k, v in values.items())

        data_name = str(config.data.class_path).rsplit(".", 1)[-1]
        run_config = Path(config.ckpt_path).resolve().parent.parent / "config.yaml"
        hint = f" (its run's config: --config {run_config})" if run_config.is_file() else ""
        self.parser.error(
            f"--ckpt_path {config.ckpt_path}: the checkpoint was trained on {record.get('data')} "
            f"({listed(trained)}), but this command's data, {data_name}, has {listed(values)}. "
            f"Pass the data the checkpoint was trained on{hint}."
        )

    def _check_schedule(self, config: Namespace) -> None:
        """A resumed fit restores the learning-rate schedule with the optimizer: the default
        cosine schedule over ``max_epochs`` keeps the period it was built with, so another
        ``max_epochs`` would train the added epochs at a rate rising again from 0 (or stop
        before the rate reaches 0). Refused, naming the choices. (With ``lr_interval: step`` the
        period depends on the data's length, unknown here: not checked.)"""
        hparams = self._checkpoint_model or {}
        if "lr_scheduler" not in hparams or hparams["lr_scheduler"] is not None:
            return  # a schedule of the user's: its own period
        if hparams.get("lr_interval", "epoch") != "epoch":
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

    def _resume_in_place(self) -> Path | None:
        """``fit --ckpt_path last``: the ``last.ckpt`` of the run to continue (the latest
        ``version_<n>`` with one, written by the same logger class, unless a version is given;
        without a logger, ``default_root_dir`` itself), with the logger pointed at that run so
        that it goes on there. Nothing to resume is an error (Lightning would warn and train from
        scratch: not what a user who asks to resume wants). ``None`` for a logger this CLI cannot
        place (no ``save_dir`` and ``name``)."""
        trainer = self.config.fit.trainer
        classes = logger_classes(trainer.get("logger"))
        init = getattr(trainer.get("logger"), "init_args", None)
        if not classes:
            runs, candidates = Path(trainer.default_root_dir), [None]
            given = " --trainer.logger false"
        elif init is None or init.get("save_dir") is None or init.get("name") is None:
            return None  # another logger: Lightning resolves "last" in its own directory
        elif init.get("version") is not None:
            runs, candidates = Path(init.save_dir) / str(init.name), [init.version]
            given = f" --trainer.logger.init_args.version {init.version}"
        else:
            runs, given = Path(init.save_dir) / str(init.name), ""
            versions = (d.name.split("_", 1)[1] for d in runs.glob("version_*"))
            candidates = sorted(int(v) for v in versions if v.isdigit())

        def run_of(version: Any) -> Path:
            if version is None:
                return runs
            return runs / (f"version_{version}" if isinstance(version, int) else str(version))

        def problem(version: Any) -> str | None:
            """Why the run of ``version`` cannot be resumed by this command (None: it can)."""
            run = run_of(version)
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

        problems = {v: problem(v) for v in candidates}
        ok = [v for v, why in problems.items() if why is None]
        if not ok:
            if given:
                why = f"looked for {run_of(candidates[0]) / 'checkpoints' / 'last.ckpt'}, and "
                why += f"{run_of(candidates[0])} {problems[candidates[0]]}"
            else:
                listed = "; ".join(
                    f"version_{v} {why}" for v, why in problems.items() if why.startswith("was")
                )
                why = (
                    f"no run to resume in {runs}: no {runs}/version_<n>/checkpoints/last.ckpt "
                    "of a run with this logger" + (f" ({listed})" if listed else "")
                )
            self.parser.error(
                f"--ckpt_path last{given}: {why}. Start a new run without --ckpt_path, pass a "
                "checkpoint file (--ckpt_path PATH), or point at the run's directory with "
                "--trainer.default_root_dir and --trainer.logger.init_args.name."
            )
        if classes:
            init.version = ok[-1]
        self.save_config_kwargs["resuming"] = True
        return run_of(ok[-1]) / "checkpoints" / "last.ckpt"


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


def take_print_config(args: list[str]) -> tuple[list[str], str | None]:
    """``args`` without ``--print_config[=flags]``, and those flags (``None``: not asked for):
    :class:`GLIFCLI` prints the config after its own rules (jsonargparse's action prints it
    while parsing, before them)."""
    kept = [a for a in args if a != "--print_config" and not a.startswith("--print_config=")]
    asked = [a.partition("=")[2] for a in args if a not in kept]
    return kept, (asked[-1] if asked else None)


def trainer_defaults(callbacks: list | None = None) -> dict[str, Any]:
    """The trainer arguments of every run, whatever the configs say (LightningCLI's
    ``trainer_defaults``; callbacks listed here cannot be removed by a config)."""
    return {
        "callbacks": [
            RunState(),  # RNG states and the model check of checkpoints
            InterruptCheckpoint(),  # Ctrl-C / SIGTERM in fit: stop after the batch, last.ckpt
            PredictionWriter(),  # predict: <run dir>/predictions.pt
            SplitFiles(),  # data with a split manifest: <run dir>/splits/
            *(callbacks or []),
        ],
    }


def cli_main(
    args: list[str] | None = None, run: bool = True, callbacks: list | None = None
) -> GLIFCLI:
    """Run the CLI on ``args`` (``None``: the command line) and return it.

    ``run=False`` only parses and builds: ``args`` then has no subcommand, and the returned
    CLI holds ``model``, ``datamodule`` and ``trainer`` (for notebooks and tests).
    ``callbacks`` are added to the trainer's configured ones (the ablation adds its own).
    """
    print_config = None
    if args is None:  # the command line: LightningCLI reads sys.argv (it warns if given both)
        sys.argv[1:] = resolve_config_paths(sys.argv[1:])
        if run:
            sys.argv[1:], print_config = take_print_config(sys.argv[1:])
    else:
        args = resolve_config_paths(args)
        if run:
            args, print_config = take_print_config(args)
    defaults = {"default_config_files": [str(DEFAULT_CONFIG)]}
    if run:
        parser_kwargs = {s: dict(defaults) for s in ("fit", "validate", "test", "predict")}
        parser_kwargs["predict"]["description"] = PREDICT_DESCRIPTION
        parser_kwargs["description"] = DESCRIPTION
    else:
        parser_kwargs = {**defaults, "description": DESCRIPTION}
    return GLIFCLI(
        SpikingClassifier,
        subclass_mode_data=True,
        auto_configure_optimizers=False,  # the module owns its optimizer (parameter groups)
        parser_kwargs=parser_kwargs,
        parser_class=GLIFParser,
        save_config_callback=RunConfig,
        save_config_kwargs={"overwrite": False},
        trainer_defaults=trainer_defaults(callbacks),
        run=run,
        args=args,
        print_config=print_config,
    )


def main() -> None:
    """The ``lightning-glif`` console script (``python train.py`` runs the same). The errors
    that a run meets on its files (a damaged checkpoint, a full disk, a run directory in use)
    end in one line, exit status 1; ``JSONARGPARSE_DEBUG=1`` shows their traceback."""
    try:
        cli_main()
    except (CorruptCheckpointError, DiskFullError, DirectoryLocked) as error:
        if os.environ.get("JSONARGPARSE_DEBUG"):
            raise
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
