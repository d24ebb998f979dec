"""The config rules: what the data knows is copied into the model, a class named in a config
starts from its own defaults, and a run is named after its data unless the user names it.

By hand, not with jsonargparse's ``link_arguments``: its links on instantiate overwrite a target
inside a subclass (``model.backbone.init_args.num_classes``) without a word when the user gave
another value, and drop every link target from the saved config, also where the link did not
apply (a static dataset's backbone T). And jsonargparse carries a class's options over to the
next class a later config names (the digits' ``val_fraction`` reaching N-MNIST). The rules use
the values the user gave (configs after ``conf/default.yaml``, ``--key value``).
"""

from __future__ import annotations

import importlib
import inspect
import re
from typing import Any

from jsonargparse import Namespace

#: The class choices whose options must not carry over from an earlier config's class.
CLASS_KEYS = ("data", "model.backbone", "model.backbone.init_args.neuron")


def as_list(value: Any) -> list:
    return value if isinstance(value, list) else [value]


def import_class(class_path: str) -> type:
    """The class named by a dotted ``class_path``."""
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def plain(value: Any) -> Any:
    """A signature default as jsonargparse would hold it (tuples as lists)."""
    if isinstance(value, tuple | list):
        return [plain(v) for v in value]
    return value


def signature_parameters(cls: type) -> list[inspect.Parameter]:
    """The named arguments of ``cls.__init__``, following ``**kwargs`` to the base classes' as
    jsonargparse does; a subclass's argument hides its base's of the same name."""
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
    return {p.name: plain(p.default) for p in params if p.default is not inspect.Parameter.empty}


def reset_carried_options(config: Namespace, given: Namespace, key: str) -> None:
    """Where the user named the class at ``key``, reset every option they did not give to that
    class's own default (instead of a value carried over from an earlier config's class)."""
    spec, named = config.get(key), given.get(key)
    if not isinstance(named, Namespace) or "class_path" not in named:
        return
    init_args = spec.get("init_args") if isinstance(spec, Namespace) else None
    if not isinstance(init_args, Namespace):
        return
    given_args = named.get("init_args") or Namespace()
    for name, default in signature_defaults(import_class(spec.class_path)).items():
        if name in init_args and name not in given_args:
            init_args[name] = default


def data_values(config: Namespace) -> dict[str, int]:
    """The :meth:`shared_values` of the data module ``config.data`` builds (cheap: no file is
    read); a bad data option is its ``ValueError``."""
    data = config.data
    init = data.get("init_args")
    return import_class(data.class_path)(**(init.as_dict() if init else {})).shared_values()


def link_data_values(config: Namespace, given: Namespace | None) -> dict[str, Any]:
    """Copy the data module's :meth:`shared_values` into ``model.num_classes`` and the
    backbone's arguments of the same names, as ordinary config values (the saved ``config.yaml``
    holds what was built); return what was copied. A value the user gave that differs from the
    data's is a ``ValueError`` naming both."""
    data, model = config.get("data"), config.get("model")
    if not isinstance(data, Namespace) or not isinstance(model, Namespace):
        return {}
    values = data_values(config)  # among lightning_glif.data.base.SHARED_NAMES
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
            raise ValueError(
                f"{key} = {wanted!r} contradicts the data: {data_name} has {name} = {value!r}. "
                f"{name} is set once, from the data module: drop {key} from your config or "
                f"command line (or change the data's own option, where it has one)."
            )
        config[key] = value
    return targets


def name_run_after_data(config: Namespace, given: Namespace | None) -> None:
    """Name every logger that has a ``name`` option after ``config.data`` (``MNISTDataModule``
    -> ``mnist``, ``RowDigitsDataModule`` -> ``row_digits``), unless ``given`` (the values the
    user gave) names a logger."""
    data = config.get("data")
    if not isinstance(data, Namespace) or not data.get("class_path"):
        return
    for item in as_list(given.get("trainer.logger") if given is not None else None):
        if isinstance(item, Namespace) and "name" in (item.get("init_args") or Namespace()):
            return
    name = data.class_path.rpartition(".")[2].removesuffix("DataModule") or "run"
    name = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()
    for item in as_list(config.get("trainer.logger")):
        init = item.get("init_args") if isinstance(item, Namespace) else None
        if isinstance(init, Namespace) and "name" in init:
            init.name = name
