"""What a checkpoint carries besides the training state (the RNG states, the model's description,
the data's values), and the check that a checkpoint fits the model it is loaded into."""

from __future__ import annotations

import pickle
import random
from typing import Any

import numpy as np
import torch
from pytorch_lightning import Callback, LightningModule, Trainer
from torch import nn

from lightning_glif.neurons.base import SpikingNeuron

#: Key of the model's description in the checkpoint dict (beside ``state_dict``).
DESCRIPTION_KEY = "model_description"
#: Key of the training data's class name and shared values (``{"data": name, "values": {...}}``).
DATA_KEY = "data_values"


def rng_states() -> dict[str, Any]:
    """The torch, CUDA (when initialised), numpy and Python RNG states, as tensors, ints and
    strings only, so a checkpoint holding them still loads with ``weights_only=True``."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": random.getstate(),
    }


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore what :func:`rng_states` returned."""
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    name, keys, *rest = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))


def describe_model(model: nn.Module) -> str:
    """``backbone X with neuron Y``: what a checkpoint's weights belong to."""
    backbone = getattr(model, "backbone", model)
    neurons = sorted({type(m).__name__ for m in model.modules() if isinstance(m, SpikingNeuron)})
    return f"backbone {type(backbone).__name__} with neuron {'/'.join(neurons) or 'none'}"


def describe_checkpoint(checkpoint: dict[str, Any]) -> str:
    """``backbone X with neuron Y``: as saved beside the weights, else from the config the CLI
    saved as hyperparameters."""
    if DESCRIPTION_KEY in checkpoint:
        return str(checkpoint[DESCRIPTION_KEY])
    backbone = checkpoint.get("hyper_parameters", {}).get("backbone")
    if not isinstance(backbone, dict):  # built in Python: the backbone was not saved
        return "a backbone built in Python (not recorded in the checkpoint)"
    neuron = backbone.get("init_args", {}).get("neuron")
    if isinstance(neuron, dict):
        neuron = neuron.get("class_path")
    name = str(backbone.get("class_path")).rsplit(".", 1)[-1]
    return f"backbone {name} with neuron {str(neuron).rsplit('.', 1)[-1]}"


def describe_checkpoint_file(path: Any) -> str:
    """:func:`describe_checkpoint` of the file at ``path``, memory-mapped (weights not read); for
    an error message only, so a file it cannot open is "a model not recorded"."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (OSError, RuntimeError, ValueError, pickle.UnpicklingError):
        # A remote URL, a legacy (non-zip) file, pickled objects.
        return "a model not recorded in the checkpoint"
    return describe_checkpoint(checkpoint)


def weight_mismatches(
    model: nn.Module, state_dict: dict[str, Any], strict: bool = True
) -> list[str]:
    """What keeps ``state_dict`` from loading into ``model``, one line per kind (empty if it
    fits): keys missing or extra (when ``strict``), tensors of another shape (always)."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict] if strict else []
    unexpected = [k for k in state_dict if k not in own] if strict else []
    reshaped = [
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if k in state_dict and hasattr(state_dict[k], "shape") and state_dict[k].shape != v.shape
    ]
    return [
        f"{len(keys)} {what} (e.g. {', '.join(keys[:3])})"
        for keys, what in (
            (missing, "weights of this model missing from the checkpoint"),
            (unexpected, "weights in the checkpoint that this model lacks"),
            (reshaped, "weights of another shape, checkpoint vs model"),
        )
        if keys
    ]


def mismatch_error(model: nn.Module, made_with: str, problems: list[str]) -> RuntimeError:
    """The error for a checkpoint made with ``made_with`` that does not fit ``model``: both
    models named and ``problems`` (:func:`weight_mismatches`), not torch's wall of keys."""
    return RuntimeError(
        f"the checkpoint does not fit this model: it was made with {made_with}, this model is "
        f"{describe_model(model)}. {'; '.join(problems)}. Build the model as the checkpoint was "
        "built (the same backbone, neuron and widths): with the CLI, pass the run's config.yaml "
        "or drop the options that change them; in Python, "
        "SpikingClassifier.load_from_checkpoint(path)."
    )


class RunState(Callback):
    """Saves the RNG states, the model's description and the data's values with every
    checkpoint; checks that a checkpoint fits the model before Lightning loads its weights.

    - The torch, CUDA, numpy and Python RNG states are restored only when a fit resumes, before
      the fit loop's first data iterator, so the resumed run shuffles as the uninterrupted one
      would; loading weights for evaluation leaves the RNGs alone.
    - ``checkpoint["model_description"]`` (``backbone X with neuron Y``) and
      ``checkpoint["data_values"]`` (the data module's class name and ``shared_values()``, which
      the CLI compares with a loading command's data before anything runs).
    - When a run loads ``ckpt_path``, a checkpoint of another neuron, backbone or width is one
      error naming both models, raised before any weight is copied.

    The CLI adds it to every run; add it to ``Trainer(callbacks=...)`` in Python.
    """

    def __init__(self) -> None:
        self._fitting = False
        self._check: torch.utils.hooks.RemovableHandle | None = None
        self._trainer: Trainer | None = None

    def state_dict(self) -> dict[str, Any]:
        return rng_states()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self._fitting:
            set_rng_states(state_dict)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        checkpoint[DESCRIPTION_KEY] = describe_model(pl_module)
        data = trainer.datamodule
        if hasattr(data, "shared_values"):
            checkpoint[DATA_KEY] = {"data": type(data).__name__, "values": data.shared_values()}

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._fitting = stage == "fit"
        # Lightning resolves trainer.ckpt_path after setup, just before it loads the weights:
        # the check is a pre-hook of the module's load_state_dict, run before any copy.
        self._remove_check()
        self._check = pl_module.register_load_state_dict_pre_hook(self._check_restored_weights)
        self._trainer = trainer

    def _check_restored_weights(self, module: nn.Module, state_dict: dict, prefix: str, *_) -> None:
        # Once: the restore from ckpt_path is a run's first load; later ones are the user's.
        self._remove_check()
        path = self._trainer.ckpt_path
        if prefix or path is None:  # not Lightning restoring this module from a checkpoint
            return
        # torch passes strict=True to every pre-hook; Lightning loads with the module's own.
        problems = weight_mismatches(module, state_dict, strict=module.strict_loading)
        if problems:
            raise mismatch_error(module, describe_checkpoint_file(path), problems)

    def _remove_check(self) -> None:
        if self._check is not None:
            self._check.remove()
            self._check = None

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._remove_check()  # Lightning skips teardown after an exception (a mismatch among them)

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._remove_check()
