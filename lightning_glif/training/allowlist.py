"""The classes a checkpoint's stored config may name (an allow-list, checked before anything is
imported), and a lookup in that config (the CLI compares it with the configured model)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from jsonargparse import Namespace

#: Packages whose classes a stored config may name unasked: the project and the libraries it runs
#: on (already imported, so naming them runs no new import-time code).
TRUSTED_PACKAGES = ("lightning_glif", "torch", "pytorch_lightning")

# A dotted name as jsonargparse resolves one: a class_path, or the shorthand string form
# (``neuron: lightning_glif.neurons.GLIF``). Any string of that form is checked, whatever its key.
_DOTTED = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+")


class UntrustedCheckpointClass(ValueError):
    """A checkpoint's stored config names a class outside the allow-list."""


def dotted_names(tree: Any, where: str = "") -> Iterator[tuple[str, str]]:
    """``(key, value)`` of every string in ``tree`` (dicts, lists, Namespaces) that reads as a
    dotted name, ``key`` its position (``backbone.init_args.neuron``)."""
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
    ``checkpoint`` names a class outside :data:`TRUSTED_PACKAGES` and ``allowed``. Call it before
    resolving any class path: that imports the module, and so runs its code."""
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
    with ``weights_only=True``, memory-mapped where it can be (the tensors are not read); with
    pickled objects in it, only if the caller passes ``weights_only=False`` (the caller's risk)."""
    file = hasattr(source, "seek")
    attempts = [{"weights_only": True}]
    if file:
        source.seek(0)
    else:  # a file object cannot be memory-mapped
        attempts.insert(0, {"weights_only": True, "mmap": True})
    if weights_only is False:
        attempts.append({"weights_only": False})
    for n, kwargs in enumerate(attempts, 1):
        try:
            checkpoint = torch.load(source, map_location="cpu", **kwargs)
        except Exception:
            if n == len(attempts):
                raise  # the loader's own error
        else:
            hparams = checkpoint.get("hyper_parameters") if isinstance(checkpoint, dict) else {}
            return dict(hparams) if isinstance(hparams, dict) else {}
        finally:
            if file:
                source.seek(0)


def lookup(tree: dict[str, Any], key: str) -> tuple[bool, Any]:
    """``(found, value)`` at dotted ``key`` of ``tree`` (a stored config): a leaf met on the way
    (``loss: null`` where the user names a class) is found, with its value; a missing key is not
    (nothing to compare)."""
    node: Any = tree
    for part in key.split("."):
        if not isinstance(node, dict):
            return True, node
        if part not in node:
            return False, None
        node = node[part]
    return True, node
