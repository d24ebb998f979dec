"""Values set once in a config: what the data knows is copied into the model, and a class named
in a config starts from its own defaults.

Why by hand and not with jsonargparse's ``link_arguments``: its links on instantiate overwrite a
target inside a subclass (``model.backbone.init_args.num_classes``) without a word when the user
gave another value, and drop every link target from the saved config, also where the link did
not apply (a static dataset has no ``time_steps``: the backbone's own T was then lost from the
run's ``config.yaml``). And jsonargparse carries
a class's options over to the next class a later config names (the digits' ``val_fraction: 0.15``
reaching N-MNIST, whose own default is 0.1). Both rules below use the values the user gave
(configs after ``conf/default.yaml`` and ``--key value``), parsed once more without defaults.
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Iterable, Iterator
from typing import Any

from jsonargparse import Namespace

#: The class choices whose options must not carry over from an earlier config's class.
CLASS_KEYS = ("data", "model.backbone", "model.backbone.init_args.neuron")

class ConfigConflict(ValueError):
    """A value given in a config or on the command line contradicts the data."""


def import_class(class_path: str) -> type:
    """The class named by a dotted ``class_path``."""
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _plain(value: Any) -> Any:
    """A signature default as jsonargparse would hold it (tuples as lists)."""
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


def signature_parameters(cls: type) -> list[inspect.Parameter]:
    """The named arguments of ``cls.__init__``, following ``**kwargs`` to the base classes'
    ``__init__`` as jsonargparse does (a subclass that only changes some defaults forwards the
    rest); a subclass's argument hides its base's of the same name."""
    found: dict[str, inspect.Parameter] = {}
    for klass in cls.__mro__:
        init = vars(klass).get("__init__")
        if init is None:
            continue
        params = list(inspect.signature(init).parameters.values())[1:]  # without self
        for p in params:
            if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                found.setdefault(p.name, p)
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return list(found.values())


def signature_defaults(cls: type) -> dict[str, Any]:
    """``{argument: default}`` of :func:`signature_parameters` for those that have one."""
    params = signature_parameters(cls)
    return {p.name: _plain(p.default) for p in params if p.default is not inspect.Parameter.empty}


def reset_carried_options(config: Namespace, given: Namespace, key: str) -> None:
    """Where the user named the class at ``key``, reset every option they did not give to that
    class's own default (instead of a value carried over from an earlier config's class)."""
    spec, named = config.get(key), given.get(key)
    if not isinstance(spec, Namespace) or not isinstance(named, Namespace):
        return
    if "class_path" not in vars(named) or not isinstance(spec.get("init_args"), Namespace):
        return
    given_args = named.get("init_args")
    given_args = vars(given_args) if isinstance(given_args, Namespace) else {}
    defaults = signature_defaults(import_class(spec.class_path))
    init_args = vars(spec.init_args)
    for name in list(init_args):
        if name not in given_args and name in defaults:
            init_args[name] = defaults[name]


def link_data_values(config: Namespace, given: Namespace | None) -> dict[str, Any]:
    """Copy the data module's :meth:`shared_values` into ``model.num_classes`` and into the
    backbone's arguments of the same names (those it accepts), and return what was copied. The
    values become ordinary config values: the run's saved ``config.yaml`` holds what was built.

    Raises :class:`ConfigConflict` naming both values when the user gave the backbone or
    ``model.num_classes`` a value that differs from the data's.
    """
    data, model = config.get("data"), config.get("model")
    if not isinstance(data, Namespace) or not isinstance(model, Namespace):
        return {}
    init = data.get("init_args")
    datamodule = import_class(data.class_path)(**(init.as_dict() if init else {}))
    values = datamodule.shared_values()  # among lightning_glif.data.base.SHARED_NAMES
    targets = {}
    if "num_classes" in values:
        targets["model.num_classes"] = values["num_classes"]
    backbone = model.get("backbone")
    if isinstance(backbone, Namespace) and backbone.get("class_path"):
        accepted = {p.name for p in signature_parameters(import_class(backbone.class_path))}
        for name, value in values.items():
            if name in accepted:
                targets[f"model.backbone.init_args.{name}"] = value
    data_name = data.class_path.rsplit(".", 1)[-1]
    for key, value in targets.items():
        wanted = given.get(key) if given is not None else None
        if wanted is not None and wanted != value:
            name = key.rsplit(".", 1)[-1]
            raise ConfigConflict(
                f"{key} = {wanted!r} contradicts the data: {data_name} has {name} = {value!r}. "
                f"{name} is set once, from the data module: drop {key} from your config or "
                f"command line (or change the data's own option, where it has one)."
            )
        config[key] = value
    return targets


# -- class paths a checkpoint may name -------------------------------------------------------------
#: Packages whose classes a checkpoint's stored config may name without the user naming them: the
#: project and the libraries it runs on (already imported by then, so naming them runs no new
#: import-time code).
TRUSTED_PACKAGES = ("lightning_glif", "torch", "pytorch_lightning")

# A dotted Python name with at least one dot, as jsonargparse resolves one: a ``class_path``, or
# the shorthand string form (``neuron: lightning_glif.neurons.GLIF``, ``optimizer:
# torch.optim.SGD``). Any string of the stored config of that form is checked, whatever its key.
_DOTTED = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+")


class UntrustedCheckpointClass(ValueError):
    """A checkpoint's stored config names a class outside the allow-list."""


def dotted_names(tree: Any, where: str = "") -> Iterator[tuple[str, str]]:
    """``(key, value)`` of every string in ``tree`` (dicts, lists, Namespaces) that reads as a
    dotted Python name; ``key`` is its dotted position (``backbone.init_args.neuron``)."""
    if isinstance(tree, Namespace):
        tree = tree.as_dict()
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from dotted_names(value, f"{where}.{key}" if where else str(key))
    elif isinstance(tree, list | tuple):
        for i, value in enumerate(tree):
            yield from dotted_names(value, f"{where}[{i}]")
    elif isinstance(tree, str) and _DOTTED.fullmatch(tree):
        yield where, tree


def is_trusted(class_path: str, allowed: Iterable[str] = ()) -> bool:
    """True if ``class_path`` is in :data:`TRUSTED_PACKAGES` or ``allowed`` (class paths, or
    modules and packages: ``"mypkg"`` allows ``mypkg.models.Net``)."""
    return any(
        class_path == name or class_path.startswith(name + ".")
        for name in (*TRUSTED_PACKAGES, *allowed)
    )


def check_checkpoint_classes(
    hparams: Any, checkpoint: Any, allowed: Iterable[str] = (), how_to_allow: str = ""
) -> None:
    """Raise :class:`UntrustedCheckpointClass` if the stored config ``hparams`` of the file
    ``checkpoint`` names a class outside :data:`TRUSTED_PACKAGES` and ``allowed``. Called before
    anything is imported from it: resolving a class path imports its module, and so runs that
    module's import-time code (jsonargparse checks the class only after the import)."""
    allowed = tuple(allowed)
    found = [
        (key, path)
        for key, path in dotted_names(hparams, "hyper_parameters")
        # Lightning checks the instantiator against its own allow-list
        if key != "hyper_parameters._instantiator" and not is_trusted(path, allowed)
    ]
    if not found:
        return
    listed = ", ".join(f"{path!r} (at {key})" for key, path in found[:5])
    raise UntrustedCheckpointClass(
        f"the checkpoint {checkpoint} names {listed} in its stored config: outside the classes a "
        f"checkpoint may load ({', '.join(TRUSTED_PACKAGES)}, and those you name yourself). "
        "Nothing was imported from it: importing a module runs its code. If you trust this "
        f"checkpoint, name the class yourself{how_to_allow}."
    )


def stored_hyperparameters(source: Any, weights_only: bool | None = True) -> dict[str, Any]:
    """The ``hyper_parameters`` of the checkpoint at ``source`` (a path or a binary file), read
    without building anything: memory-mapped with ``weights_only=True`` (the tensors are not
    read, no pickled object runs). Only when the file holds pickled objects and the caller opted
    into ``weights_only=False`` is it loaded that way (its pickle then runs: the caller's risk)."""
    import torch

    attempts = [{"weights_only": True, "mmap": True}, {"weights_only": True}]
    if weights_only is False:
        attempts.append({"weights_only": False})
    error: Exception | None = None
    for kwargs in attempts:
        if hasattr(source, "seek"):
            if kwargs.get("mmap"):
                continue  # a file object cannot be memory-mapped
            source.seek(0)
        try:
            checkpoint = torch.load(source, map_location="cpu", **kwargs)
        except Exception as failed:  # noqa: BLE001 - the next attempt, or the loader's own error
            error = failed
            continue
        finally:
            if hasattr(source, "seek"):
                source.seek(0)
        hparams = checkpoint.get("hyper_parameters", {}) if isinstance(checkpoint, dict) else {}
        return dict(hparams) if isinstance(hparams, dict) else {}
    assert error is not None
    raise error
