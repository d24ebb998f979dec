"""Train, validate, test or predict with a spiking classifier: a LightningCLI.

    python train.py fit                      # conf/default.yaml: GLIF convnet on the 8x8 digits
    python train.py fit --config conf/experiment/cifar10_resnet19_t4.yaml
    python train.py fit --config conf/neuron/lif.yaml --config conf/debug.yaml
    python train.py test --ckpt_path runs/digits/version_0/checkpoints/last.ckpt
    python train.py fit --print_config       # the resolved config, without running

``python train.py fit`` takes about 23 s on a 2-core CPU and reaches about 98.9% validation
top-1 (12 epochs; README.md, "Training").

``conf/default.yaml`` is always read first; every ``--config`` after it overrides what it names,
later files win, and ``--key value`` arguments win over all files. Experiment configs first,
then overlays (``conf/neuron/*.yaml``, ``conf/debug.yaml``).

Each command writes into one run directory, ``<trainer.default_root_dir>/<name>/version_<n>/``
(default ``runs/digits/version_0/``, the next free version): the TensorBoard logs (``tensorboard
--logdir runs``), the resolved ``config.yaml`` and ``checkpoints/`` (the best epoch on
``val/acc`` and ``last.ckpt``, the latest). Choose the root with ``--trainer.default_root_dir``
and the name with ``--trainer.logger.init_args.name``. A config already in the directory (a
fixed ``version``) is an error, never overwritten.

``test``/``validate``/``predict --ckpt_path`` rebuild the model from the checkpoint (its config
is stored in it); the data comes from the configs given, so pass the same ``--config`` as for
``fit``.

Resuming (weights, optimizer, schedule, epoch and step, RNG states): ``fit --ckpt_path last``
continues the latest run of ``<default_root_dir>/<name>/`` in its own directory, from its
``checkpoints/last.ckpt`` (``--trainer.logger.init_args.version N`` picks run ``version_N``);
pass the same options as the first time. The original ``config.yaml`` is kept, the resumed
command's config is saved beside it as ``config.resume<k>.yaml``. ``fit --ckpt_path
.../last.ckpt`` resumes from that file into a new version directory.
"""

from __future__ import annotations

import difflib
import re
import sys
from pathlib import Path

from pytorch_lightning.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback

from lightning_glif.callbacks.run_state import RunState
from lightning_glif.config_links import (
    CLASS_KEYS,
    ConfigConflict,
    import_class,
    link_data_values,
    reset_carried_options,
    signature_parameters,
)
from lightning_glif.module import SpikingClassifier

CONF_DIR = Path(__file__).resolve().parent / "conf"
DEFAULT_CONFIG = CONF_DIR / "default.yaml"
DESCRIPTION = (
    "Train and evaluate spiking classifiers (lightning-glif). Every run reads conf/default.yaml "
    "(a GLIF convnet on the embedded 8x8 digits), then each --config in order, then --key value "
    "arguments. Outputs go to <trainer.default_root_dir>/<logger name>/version_<n>/. "
    "Run a subcommand with --help for its options."
)


class GLIFParser(LightningArgumentParser):
    """jsonargparse's parser, whose errors about unknown keys also list the closest valid ones
    (its errors about values already name the key and the allowed choices)."""

    def error(self, message: str, ex: Exception | None = None):
        return super().error(message + _suggestions(message, self), ex)


def _option_keys(parser) -> set[str]:
    """Every ``--a.b.c`` option of ``parser`` and its subcommands, as ``a.b.c``."""
    keys: set[str] = set()
    for action in parser._actions:
        keys.update(o[2:] for o in action.option_strings if o.startswith("--"))
        for sub in getattr(action, "_name_parser_map", {}).values():
            keys |= _option_keys(sub)
    return keys


def _suggestions(message: str, parser) -> str:
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
    if unknown:
        keys = sorted(_option_keys(parser))
        for key in unknown:
            close = difflib.get_close_matches(key, keys, n=3, cutoff=0.75)
            if close:
                hints.append(f"unknown key {key!r}: did you mean {' or '.join(map(repr, close))}?")
    # Nested parsers re-raise their children's errors: add each hint once.
    return "".join(f"\n  {h}" for h in dict.fromkeys(hints) if h not in message)


class RunConfig(SaveConfigCallback):
    """Saves the resolved config in the run directory; a run resumed in place (``--ckpt_path
    last``) keeps the original ``config.yaml`` and adds ``config.resume<k>.yaml``."""

    def __init__(self, *args, resuming: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.resuming = resuming

    def setup(self, trainer, pl_module, stage: str) -> None:
        if self.resuming and trainer.log_dir:
            k = 1
            while (Path(trainer.log_dir) / f"config.resume{k}.yaml").exists():
                k += 1
            self.config_filename = f"config.resume{k}.yaml"
        super().setup(trainer, pl_module, stage)


class GLIFCLI(LightningCLI):
    """LightningCLI with the values the data knows set once, configs that do not leak into other
    classes, and resuming in place."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # One run directory: the logger (and so the checkpoints and the saved config) lives
        # under trainer.default_root_dir.
        parser.link_arguments("trainer.default_root_dir", "trainer.logger.init_args.save_dir")

    def parse_arguments(self, parser: LightningArgumentParser, args) -> None:
        super().parse_arguments(parser, args)
        sub = self.config.get("subcommand")
        self._explicit = None
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

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        # A checkpoint's model config (merged by LightningCLI from `--ckpt_path FILE`) is what
        # was trained: its options are given, not carried over.
        from_checkpoint = bool(config.get("ckpt_path")) and Path(config.ckpt_path).is_file()
        if self._explicit is not None:
            for key in CLASS_KEYS:
                if not (from_checkpoint and key.startswith("model.")):
                    reset_carried_options(config, self._explicit, key)
        try:
            link_data_values(config, self._explicit)
        except ConfigConflict as conflict:
            self.parser.error(str(conflict))
        self._resume_in_place()

    def _resume_in_place(self) -> None:
        """``fit --ckpt_path last``: point the logger at the run to continue (the latest
        ``version_<n>`` with a ``checkpoints/last.ckpt``, unless a version is given), so that
        Lightning finds its ``last.ckpt`` in the checkpoint directory and the run goes on there."""
        if self.subcommand != "fit" or self.config.fit.get("ckpt_path") != "last":
            return
        logger = self.config.fit.trainer.get("logger")
        init = getattr(logger, "init_args", None)
        if init is None or init.get("save_dir") is None or init.get("name") is None:
            return  # another logger: Lightning resolves "last" in its own checkpoint directory
        runs = Path(init.save_dir) / str(init.name)
        if init.get("version") is None:
            done = [
                int(d.name.split("_", 1)[1])
                for d in runs.glob("version_*")
                if d.name.split("_", 1)[1].isdigit() and (d / "checkpoints" / "last.ckpt").is_file()
            ]
            if not done:
                return  # nothing to resume: Lightning warns and trains from scratch
            init.version = max(done)
        self.save_config_kwargs["resuming"] = True


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
    return out


def cli_main(
    args: list[str] | None = None, run: bool = True, callbacks: list | None = None
) -> GLIFCLI:
    """Run the CLI on ``args`` (``None``: the command line) and return it.

    ``run=False`` only parses and builds: ``args`` then has no subcommand, and the returned
    CLI holds ``model``, ``datamodule`` and ``trainer`` (for notebooks and tests).
    ``callbacks`` are added to the trainer's configured ones (the ablation adds its own).
    """
    if args is None:  # the command line: LightningCLI reads sys.argv (it warns if given both)
        sys.argv[1:] = resolve_config_paths(sys.argv[1:])
    else:
        args = resolve_config_paths(args)
    defaults = {"default_config_files": [str(DEFAULT_CONFIG)]}
    if run:
        parser_kwargs = {s: defaults for s in ("fit", "validate", "test", "predict")}
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
        # Always on, whatever the config lists: RNG states and the model check of checkpoints.
        trainer_defaults={"callbacks": [RunState(), *(callbacks or [])]},
        run=run,
        args=args,
    )


def main() -> None:
    """The ``lightning-glif`` console script (``python train.py`` runs the same)."""
    cli_main()


if __name__ == "__main__":
    main()
